"""Sampler-step artifacts end to end on the tiny checkpoint: `export --sampler` for each sampler (onnx; Lite for
ddim and dpmpp3m) behind its trajectory gate, the runtime's in-graph loop against the numpy scheduler on the
plain U-Net, bad inputs, and the portable noise as the runtime's and the reference sampler's default."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import LITE_PLATFORM, assert_clean_error, checkpoint_with_changed_weight, run_cli, tiny_config
from ms_ddpm.runtime.backends import Backend
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.manifest import STEP_INPUTS, STEP_OUTPUTS, Manifest, SamplerSettings, manifest_path_for
from ms_ddpm.runtime.noise import NoiseStream
from ms_ddpm.runtime.pipeline import Sampler
from ms_ddpm.runtime.processes import run_module
from ms_ddpm.runtime.schedulers import make_scheduler

T = tiny_config().diffusion.timesteps
# one setting per sampler, with what each exercises: DDPM at all T steps (the end-to-end check joins the gate),
# stochastic DDIM, multistep, stochastic multistep with clipping, third order, few steps spaced by noise level
SAMPLERS = {"ddpm": SamplerSettings("ddpm"), "ddim": SamplerSettings("ddim", 4, eta=0.5),
            "dpmpp": SamplerSettings("dpmpp", 4), "dpmpp-sde": SamplerSettings("dpmpp-sde", 5, clip_x0=True),
            "dpmpp3m": SamplerSettings("dpmpp3m", 5, spacing="linspace"),
            "dpmpp-sde-logsnr": SamplerSettings("dpmpp-sde", 4, spacing="logsnr")}
FLOAT_ATOL = 1e-4  # in-graph loop vs numpy loop, both on onnxruntime


def export_step(checkpoint: Path, out: Path, settings: SamplerSettings, fmt: str = "onnx", batch=None) -> Path:
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint

    return export_checkpoint(checkpoint, ExportRequest(format=fmt, out=out, batch=batch, sampler=settings),
                             log=lambda _: None)


def options(settings: SamplerSettings) -> dict:
    return dict(eta=settings.eta, spacing=settings.spacing, clip_x0=settings.clip_x0)


@pytest.fixture(scope="module", params=list(SAMPLERS))
def step_onnx(request, tiny_checkpoint, tmp_path_factory) -> tuple:
    settings = SAMPLERS[request.param]
    return settings, export_step(tiny_checkpoint, tmp_path_factory.mktemp("step") / "unet.sampler.onnx", settings)


def test_export_writes_a_verified_step_artifact_with_its_sampler(step_onnx):
    settings, artifact = step_onnx
    manifest = Manifest.load(manifest_path_for(artifact))
    assert manifest.verification["passed"] and manifest.verification["worst_max_abs"] <= FLOAT_ATOL
    assert [s.name for s in manifest.inputs] == list(STEP_INPUTS) and [s.name for s in manifest.outputs] == list(STEP_OUTPUTS)
    section = manifest.sampler
    table = settings.scheduler(manifest.tables()).table()
    assert (section["name"], section["steps"], section["timesteps"]) == (settings.name, len(table.timesteps),
                                                                         table.timesteps.tolist())
    assert (section["noise_steps"], section["history"], section["clip_x0"]) == (table.noise_steps, table.history,
                                                                                settings.clip_x0)
    assert section["state_shape"] == [max(table.history, 1), "batch", 1, 8, 8]
    assert section["noise"].startswith("philox4x32-10") and "x, x0, state = model(" in section["host_loop"]
    ends_to_end = [note for note in manifest.verification["notes"] if note.startswith("end-to-end DDPM")]
    assert len(ends_to_end) == (settings.name == "ddpm") and all("PASS" in note for note in ends_to_end)


def test_in_graph_loop_matches_the_numpy_scheduler_on_the_plain_unet(step_onnx, tiny_exports):
    settings, artifact = step_onnx
    graph, host = Sampler.load(artifact), Sampler.load(tiny_exports["onnx"])
    steps = []
    scheduler = host.scheduler(settings.name, settings.steps, **options(settings))
    x_T, noise = host.draw_noise(5, scheduler.noise_steps, seed=3)
    noise = list(noise)
    in_graph = graph.denoise(graph.scheduler(), x_T, noise, callback=lambda i, t, x: steps.append((i, t)))
    on_host = host.denoise(scheduler, x_T, noise)
    assert np.abs(in_graph - on_host).max() <= FLOAT_ATOL
    assert steps == list(enumerate(scheduler.timesteps.tolist()))
    # the same seed gives the same images through sample(), on either artifact
    images = graph.sample(5, seed=3)
    assert images.tobytes() == graph.sample(5, seed=3).tobytes()
    assert np.abs(images.astype(int) - host.sample(5, scheduler, seed=3)).max() <= 1


def test_asking_a_step_artifact_for_another_scheduler_names_what_it_carries(step_onnx):
    settings, artifact = step_onnx
    sampler = Sampler.load(artifact)
    other = "ddim" if settings.name != "ddim" else "dpmpp"
    with pytest.raises(ToolkitError, match=f"carries its sampler \\({settings.name}, .*cannot sample with name '{other}'"):
        sampler.sample(2, other)
    with pytest.raises(ToolkitError, match="cannot sample with steps 3"):
        sampler.scheduler(steps=3)
    assert sampler.settings(settings.name) == sampler.carries  # its own settings are fine
    shorter = make_scheduler(settings.name, sampler.tables, 2, **options(settings))
    with pytest.raises(ToolkitError, match="the scheduler given is another"):
        sampler.denoise(shorter, np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 1, 1, 8, 8), np.float32))


def test_cli_samples_a_step_artifact_like_the_plain_unet(tiny_exports, tiny_checkpoint, tmp_path):
    settings = SAMPLERS["dpmpp-sde"]
    artifact = export_step(tiny_checkpoint, tmp_path / "unet.sampler.onnx", settings)
    step = run_cli("sample", "--artifact", artifact, "--n", "16", "--seed", "0", "--out", tmp_path / "step.png",
                   "--npz", tmp_path / "step.npz")
    assert step.returncode == 0, step.stderr[-2000:]
    plain = run_cli("sample", "--artifact", tiny_exports["onnx"], "--scheduler", "dpmpp-sde", "--steps", "5",
                    "--clip-x0", "--n", "16", "--seed", "0", "--out", tmp_path / "plain.png", "--npz", tmp_path / "plain.npz")
    assert plain.returncode == 0, plain.stderr[-2000:]
    with np.load(tmp_path / "step.npz") as a, np.load(tmp_path / "plain.npz") as b:
        assert np.abs(a["images"].astype(int) - b["images"]).max() <= 1 and np.mean(a["images"] == b["images"]) > 0.99
    refused = run_cli("sample", "--artifact", artifact, "--scheduler", "ddim", "--out", tmp_path / "no.png")
    assert_clean_error(refused, "carries its sampler (dpmpp-sde, 5 steps", "name 'ddim'")
    assert not (tmp_path / "no.png").exists()


def test_fixed_batch_step_artifact_pads_images_and_state(tiny_checkpoint, tiny_exports, tmp_path):
    settings = SAMPLERS["dpmpp3m"]
    artifact = export_step(tiny_checkpoint, tmp_path / "unet.sampler.onnx", settings, batch=2)
    sampler, host = Sampler.load(artifact), Sampler.load(tiny_exports["onnx"])
    assert sampler.backend.fixed_batch == 2 and sampler.backend.batch_axes == ((0, None, 0, 1), (0, 0, 1))
    x_T, _ = host.draw_noise(5, 0, seed=1)  # 5 images: chunks of 2, the last padded with zeros (state too)
    scheduler = host.scheduler(settings.name, settings.steps, **options(settings))
    assert np.abs(sampler.denoise(sampler.scheduler(), x_T) - host.denoise(scheduler, x_T)).max() <= FLOAT_ATOL


def test_backend_chunks_every_input_along_its_batch_axis():
    calls = []

    def step(x, i, z, state):  # a fake step model: the batch is axis 0 of x and z, axis 1 of state
        calls.append((len(x), state.shape[1]))
        return x + z + i[0], x - z, state + x[None]

    backend = Backend("fake", step, fixed_batch=3, batch_axes=((0, None, 0, 1), (0, 0, 1)))
    x, z = np.arange(7.0).reshape(7, 1), np.ones((7, 1))
    state = np.arange(14.0).reshape(2, 7, 1)
    got = backend(x, np.array([4]), z, state)
    assert calls == [(3, 3)] * 3
    for array, expected in zip(got, (x + z + 4, x - z, state + x[None])):
        assert np.array_equal(array, expected)


@pytest.mark.skipif(not LITE_PLATFORM, reason="MindSpore Lite's only wheel is x86_64 Linux")
@pytest.mark.parametrize("name", ["ddim", "dpmpp3m"])
def test_lite_step_artifact_matches_the_numpy_loop(name, tiny_checkpoint, tiny_exports, tmp_path):
    from ms_ddpm.export.sampler_export import STEP_THRESHOLDS

    settings = SAMPLERS[name]
    artifact = export_step(tiny_checkpoint, tmp_path / "unet.sampler.lite.mindir", settings, fmt="mslite")
    manifest = Manifest.load(manifest_path_for(artifact))
    assert manifest.verification["passed"] and manifest.inputs[1].dtype == "int32"
    host = Sampler.load(tiny_exports["onnx"])
    scheduler = host.scheduler(settings.name, settings.steps, **options(settings))
    x_T, noise = host.draw_noise(3, scheduler.noise_steps, seed=5)
    noise = np.asarray(list(noise), np.float32).reshape(-1, *x_T.shape)
    np.savez(tmp_path / "noise.npz", x_T=x_T, step_noise=noise)
    run_module("runtime.equivalence", artifact, tmp_path / "noise.npz", tmp_path / "out.npz", what="Lite sampling")
    with np.load(tmp_path / "out.npz") as out:  # Lite runs in a child: this process has MindSpore
        assert np.abs(out["x0"] - host.denoise(scheduler, x_T, noise)).max() <= STEP_THRESHOLDS["mslite"].atol


def test_gate_catches_a_step_artifact_of_other_weights(tiny_checkpoint, tmp_path):
    changed = checkpoint_with_changed_weight(tiny_checkpoint, tmp_path / "changed.ckpt", 1.05)
    artifact = export_step(changed, tmp_path / "unet.sampler.onnx", SAMPLERS["ddim"])
    failed = run_cli("verify", artifact, "--checkpoint", tiny_checkpoint)
    assert_clean_error(failed, "does not compute", code=1)
    assert "gate: FAIL" in failed.stdout
    passed = run_cli("verify", artifact, "--checkpoint", changed)
    assert passed.returncode == 0 and "gate: PASS" in passed.stdout, passed.stderr[-2000:]
    # a failing gate at export writes nothing
    out = tmp_path / "strict.sampler.onnx"
    strict = run_cli("export", "--checkpoint", tiny_checkpoint, "--format", "onnx", "--sampler", "ddim", "--steps", "4",
                     "--atol", "0", "--out", out)
    assert_clean_error(strict, "failed the numeric gate", code=1)
    assert not out.exists() and not manifest_path_for(out).exists()


@pytest.mark.parametrize("args, fragments", [
    (["--sampler", "euler"], ["unknown sampler 'euler'"]),
    (["--sampler", "ddpm", "--eta", "0.5"], ["--eta applies to --sampler ddim only"]),
    (["--sampler", "ddim", "--steps", str(T + 1)], ["steps must be between 1 and T=10"]),
    (["--sampler", "ddim", "--format", "mindir"], ["--sampler writes an onnx or mslite artifact, not mindir"]),
    (["--steps", "4"], ["--steps: sampler options, for --sampler only"]),
    (["--sampler", "ddim", "--spacing", "odd"], ["--spacing one of"]),
])
def test_bad_sampler_options_are_one_line_and_exit_2(tiny_checkpoint, tmp_path, args, fragments):
    out = tmp_path / "unet.sampler.onnx"
    fmt = [] if "--format" in args else ["--format", "onnx"]
    result = run_cli("export", "--checkpoint", tiny_checkpoint, *fmt, "--out", out, *args)
    assert_clean_error(result, *fragments)
    assert sorted(tmp_path.iterdir()) == []


def test_manifest_sampler_section_must_match_its_settings(step_onnx, tmp_path):
    _, artifact = step_onnx
    data = json.loads(manifest_path_for(artifact).read_text())
    data["sampler"]["timesteps"] = data["sampler"]["timesteps"][::-1]
    with pytest.raises(ToolkitError, match="sampler timesteps disagree with"):
        Manifest.from_dict(data)
    del data["sampler"]
    with pytest.raises(ToolkitError, match="expected inputs \\(x, t\\) and one output"):
        Manifest.from_dict(data)


# ---- the portable noise --------------------------------------------------------------------------
def test_seeded_noise_is_the_portable_stream_in_loop_order(tiny_exports):
    sampler = Sampler.load(tiny_exports["onnx"])
    x_T, noise = sampler.draw_noise(3, 4, seed=11)
    stream = NoiseStream(11)
    assert np.array_equal(x_T, stream.draw((3, 1, 8, 8)))
    assert np.array_equal(np.stack(list(noise)), stream.draw((4, 3, 1, 8, 8)))
    first = sampler.sample(3, "ddim", 4, eta=1.0, seed=11)
    assert first.tobytes() == sampler.sample(3, "ddim", 4, eta=1.0, seed=11).tobytes()
    assert first.tobytes() != sampler.sample(3, "ddim", 4, eta=1.0, seed=12).tobytes()
    assert "sampler" not in json.loads(manifest_path_for(tiny_exports["onnx"]).read_text())  # U-Nets: no section


def test_reference_sampler_draws_the_runtimes_noise():
    from ms_ddpm.train.diffusion import draw_sampling_noise

    x_T, step_noise = draw_sampling_noise(7, (2, 1, 8, 8), T)
    stream = NoiseStream(7)
    assert np.array_equal(x_T, stream.draw((2, 1, 8, 8)))
    assert np.array_equal(step_noise, stream.draw((T - 1, 2, 1, 8, 8)))
