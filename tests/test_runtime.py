"""The sampling runtime on real exported artifacts of the tiny U-Net: equivalence with the MindSpore
reference sampler, determinism, batch policies, backends, isolation from MindSpore, and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, assert_clean_error, run_cli, tiny_config
from ms_ddpm.runtime.backends import Backend
from ms_ddpm.runtime.equivalence import MAX_ABS, PSNR_MIN_DB, compare_samples
from ms_ddpm.runtime.files import sha256_file
from ms_ddpm.runtime.manifest import manifest_path_for
from ms_ddpm.runtime.pipeline import Sampler

T = tiny_config().diffusion.timesteps


def export_artifact(checkpoint: Path, out: Path, fmt: str = "onnx", batch: int | None = None) -> Path:
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint

    return export_checkpoint(checkpoint, ExportRequest(format=fmt, out=out, batch=batch, gate=None), log=lambda _: None)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_artifact(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "unet.onnx")


@pytest.fixture(scope="module")
def sampler(tiny_onnx) -> Sampler:
    return Sampler.load(tiny_onnx)


# ---- the same numbers as the MindSpore reference ---------------------------------------------------
def test_seeded_noise_is_the_reference_samplers_noise(sampler):
    from ms_ddpm.train.diffusion import draw_sampling_noise

    x_T, lazy_noise = sampler.draw_noise(3, T - 1, seed=7)
    ref_x_T, ref_noise = draw_sampling_noise(7, (3, 1, 8, 8), T)
    assert np.array_equal(x_T, ref_x_T) and np.array_equal(np.stack(list(lazy_noise)), ref_noise)


def test_ddpm_on_onnxruntime_matches_the_mindspore_reference(sampler, tiny_checkpoint):
    from ms_ddpm.train.checkpoint import load_model
    from ms_ddpm.train.diffusion import draw_sampling_noise, reference_sample

    net, _ = load_model(tiny_checkpoint)
    x_T, step_noise = draw_sampling_noise(0, (6, 1, 8, 8), T)
    reference = reference_sample(net, sampler.tables, x_T, step_noise)
    figures = compare_samples(reference, sampler.denoise(sampler.scheduler("ddpm"), x_T, step_noise))
    assert figures["psnr_db"] >= PSNR_MIN_DB and figures["max_abs"] <= MAX_ABS, figures
    assert figures["max_abs_unclipped"] <= MAX_ABS, figures
    # the comparison is sharp: one skipped step of noise is visible
    shifted = sampler.denoise(sampler.scheduler("ddpm"), x_T, np.roll(step_noise, 1, axis=0))
    assert compare_samples(reference, shifted)["max_abs"] > MAX_ABS


def test_verify_end_to_end_passes_for_the_source_checkpoint(tiny_onnx, tiny_checkpoint):
    result = run_cli("verify", tiny_onnx, "--checkpoint", tiny_checkpoint, "--end-to-end")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "end-to-end DDPM" in result.stdout + result.stderr and "PASS" in result.stdout + result.stderr


def test_end_to_end_check_fails_for_other_weights(tiny_onnx, tmp_path):
    import mindspore as ms

    from ms_ddpm.export.end_to_end import check_end_to_end
    from ms_ddpm.runtime.errors import VerificationFailed
    from ms_ddpm.train.checkpoint import save_checkpoint
    from ms_ddpm.train.model import build_unet

    ms.set_seed(1)
    other = save_checkpoint(tmp_path / "other.ckpt", tiny_config(), step=0, net=build_unet(tiny_config().model))
    with pytest.raises(VerificationFailed, match="differ from the MindSpore reference"):
        check_end_to_end(tiny_onnx, other, images=2, log=lambda _: None)


# ---- the pipeline ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler, steps", [("ddpm", None), ("ddim", 4), ("dpmpp", 3)])
def test_same_seed_same_bytes(sampler, scheduler, steps):
    first = sampler.sample(4, scheduler, steps, seed=3)
    assert first.shape == (4, 8, 8, 1) and first.dtype == np.uint8
    assert first.tobytes() == sampler.sample(4, scheduler, steps, seed=3).tobytes()
    assert first.tobytes() != sampler.sample(4, scheduler, steps, seed=4).tobytes()


def test_step_noise_must_match_the_stochastic_steps(sampler):
    ddpm = sampler.scheduler("ddpm")
    x_T = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="ran out of step noise"):
        sampler.denoise(ddpm, x_T, np.zeros((T - 2, 2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="more step noise"):
        sampler.denoise(ddpm, x_T, np.zeros((T, 2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="x_T must have shape"):
        sampler.denoise(ddpm, np.zeros((2, 1, 4, 4), np.float32), ())


def test_backend_chunks_to_the_batch_and_pads_a_fixed_batch():
    calls = []

    def run(x, t):
        calls.append(len(x))
        return x * 2 + t[:, None, None, None]

    x, t = np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1), np.arange(7, dtype=np.int32)
    expected = x * 2 + t[:, None, None, None]
    for backend, sizes in [(Backend("fake", run, fixed_batch=3), [3, 3, 3]),
                           (Backend("fake", run, max_batch=2), [2, 2, 2, 1]), (Backend("fake", run), [7])]:
        calls.clear()
        assert np.array_equal(backend(x, t), expected) and calls == sizes


def test_batch_size_does_not_change_the_samples(tiny_onnx, sampler):
    chunked = Sampler.load(tiny_onnx, batch=2)
    x_T, noise = sampler.draw_noise(5, T - 1, seed=0)
    noise = np.stack(list(noise))
    np.testing.assert_allclose(chunked.denoise(chunked.scheduler("ddpm"), x_T, noise),
                               sampler.denoise(sampler.scheduler("ddpm"), x_T, noise), atol=1e-5)


def test_mindspore_backend_on_a_fixed_batch_mindir_matches_onnxruntime(tiny_checkpoint, sampler, tmp_path):
    mindir = export_artifact(tiny_checkpoint, tmp_path / "unet.mindir", fmt="mindir", batch=3)
    on_mindspore = Sampler.load(mindir)  # backend chosen from the format
    assert on_mindspore.backend.name == "mindspore" and on_mindspore.backend.fixed_batch == 3
    x_T, _ = sampler.draw_noise(5, 0, seed=1)  # 5 images: chunks of 3, the second padded
    ddim = dict(name="ddim", steps=4)
    np.testing.assert_allclose(on_mindspore.denoise(on_mindspore.scheduler(**ddim), x_T),
                               sampler.denoise(sampler.scheduler(**ddim), x_T), atol=1e-4)


def test_sampling_from_onnx_never_imports_mindspore(tiny_onnx):
    code = f"""
import json, sys
import ms_ddpm.runtime
light = sorted(m for m in ("typer", "tqdm", "scipy", "onnxruntime", "mindspore", "PIL") if m in sys.modules)
from ms_ddpm.runtime import Sampler
images = Sampler.load({str(tiny_onnx)!r}).sample(2, "dpmpp", steps=3)
print(json.dumps({{"light": light, "shape": list(images.shape), "mindspore": "mindspore" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"light": [], "shape": [2, 8, 8, 1], "mindspore": False}


# ---- the CLI ---------------------------------------------------------------------------------------
def test_cli_sample_writes_grid_gif_and_npz(tiny_onnx, tmp_path):
    out, gif, npz = tmp_path / "grid.png", tmp_path / "steps.gif", tmp_path / "images.npz"
    result = run_cli("sample", "--artifact", tiny_onnx, "--scheduler", "ddim", "--steps", "4", "--spacing", "linspace",
                     "--n", "5", "--batch", "2", "--seed", "9", "--out", out, "--gif", gif, "--npz", npz)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes().startswith(b"\x89PNG") and gif.read_bytes().startswith(b"GIF8")
    with np.load(npz, allow_pickle=False) as saved:
        expected = Sampler.load(tiny_onnx, batch=2).sample(5, "ddim", 4, seed=9, spacing="linspace")
        assert np.array_equal(saved["images"], expected)


@pytest.fixture()
def damaged(tiny_onnx, tmp_path):
    """A copy of the tiny ONNX artifact and its manifest, with helpers to break either."""
    artifact = tmp_path / "unet.onnx"
    artifact.write_bytes(tiny_onnx.read_bytes())
    manifest_path_for(artifact).write_text(manifest_path_for(tiny_onnx).read_text())

    def edit_manifest(change):
        data = json.loads(manifest_path_for(artifact).read_text())
        change(data)
        data["artifact_sha256"] = sha256_file(artifact)
        manifest_path_for(artifact).write_text(json.dumps(data))

    return artifact, edit_manifest


def _garbage(artifact, edit):
    artifact.write_bytes(b"not an onnx model")
    edit(lambda data: None)


def _other_image_size(artifact, edit):
    def change(data):
        data["config"]["model"]["image_size"] = 16
        for spec in data["inputs"][:1] + data["outputs"]:
            spec["shape"] = ["batch", 1, 16, 16]
    edit(change)


@pytest.mark.parametrize("damage, args, fragments", [
    pytest.param(lambda a, e: a.unlink(), [], ["artifact not found"], id="missing-artifact"),
    pytest.param(_garbage, [], ["corrupt or unreadable ONNX artifact"], id="corrupt-artifact"),
    pytest.param(lambda a, e: manifest_path_for(a).unlink(), [], ["manifest not found"], id="missing-manifest"),
    pytest.param(lambda a, e: a.write_bytes(a.read_bytes() + b"\0"), [], ["does not match its manifest", "sha256"],
                 id="sha256-mismatch"),
    pytest.param(_other_image_size, [], ["does not match its manifest", "16"], id="shape-mismatch"),
    pytest.param(None, ["--backend", "tensorrt"], ["unknown backend 'tensorrt'"], id="unknown-backend"),
    pytest.param(None, ["--backend", "mindspore"], ["runs mindir artifacts", "--backend onnxruntime"],
                 id="backend-format-mismatch"),
    pytest.param(None, ["--scheduler", "euler"], ["unknown scheduler 'euler'"], id="unknown-scheduler"),
    pytest.param(None, ["--steps", "0"], ["steps must be between 1 and T=10"], id="steps-0"),
    pytest.param(None, ["--steps", str(T + 1)], ["steps must be between 1 and T=10"], id="steps-above-T"),
    pytest.param(None, ["--provider", "NoSuchExecutionProvider"], ["NoSuchExecutionProvider is not available"],
                 id="unavailable-provider"),
    pytest.param(None, ["--batch", "0"], ["--batch must be >= 1"], id="batch-0"),
])
def test_cli_bad_input_is_one_line_and_exit_2(damaged, tmp_path, damage, args, fragments):
    artifact, edit = damaged
    if damage is not None:
        damage(artifact, edit)
    result = run_cli("sample", "--artifact", artifact, "--n", "2", "--out", tmp_path / "grid.png", *args)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "grid.png").exists()


def test_cli_names_the_install_command_of_a_missing_backend_library(tiny_onnx, tmp_path):
    hidden = tmp_path / "hide"
    (hidden / "onnxruntime").mkdir(parents=True)
    (hidden / "onnxruntime" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    result = run_cli("sample", "--artifact", tiny_onnx, "--out", tmp_path / "grid.png", env={"PYTHONPATH": str(hidden)})
    assert_clean_error(result, "onnxruntime", "not installed", "pip install onnxruntime")
