"""The C++ host (runtime/hosts/cpp, `ddpm-sample`) on MindSpore Lite against the Python loop on the same Lite
sampler-step artifact: same noise file or same seed, same images. The host always runs here without
Python: PATH holds an empty folder and the environment has no PYTHONPATH.

Step artifacts: the tiny checkpoint (T = 10) as DDPM-T, and DDIM and DPM-Solver++ at fewer steps than T
(standing for DDIM-50 and DPM-Solver++-20 on a model with T >= 50).
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from conftest import LITE_PLATFORM, assert_clean_error, run_cli, tiny_config
from ms_ddpm.runtime.images import save_grid, to_uint8

pytestmark = pytest.mark.skipif(not LITE_PLATFORM, reason="MindSpore Lite's only PyPI wheel is for x86_64 Linux")

SAMPLERS = {"ddpm": 10, "ddim": 7, "dpmpp": 5}  # name -> steps (the tiny model has T = 10)
N = 16
ATOL = 1e-4  # max abs of the final float x
UINT8_EQUAL = 0.999  # share of equal uint8 pixels


def export_step_artifact(checkpoint: Path, out: Path, name: str, steps: int, *options) -> Path:
    """`cli.py export --format mslite --sampler NAME --steps S`, unverified (the export gate has its own tests)."""
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "mslite", "--sampler", name, "--steps", steps,
                     "--no-verify", "--out", out, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def step_artifacts(tiny_checkpoint, tmp_path_factory) -> Dict[str, Path]:
    """One Lite sampler-step artifact of the tiny checkpoint per sampler, with its manifest."""
    folder = tmp_path_factory.mktemp("steps")
    return {name: export_step_artifact(tiny_checkpoint, folder / f"{name}.sampler.lite.mindir", name, steps)
            for name, steps in SAMPLERS.items()}


@pytest.fixture(scope="module")
def rgb_artifact(tmp_path_factory) -> Path:
    """DDIM on an untrained tiny U-Net for 3-channel images."""
    import mindspore as ms

    from ms_ddpm.train.checkpoint import save_checkpoint
    from ms_ddpm.train.model import build_unet

    ms.set_seed(1)
    config = replace(tiny_config(), model=replace(tiny_config().model, channels=3))
    folder = tmp_path_factory.mktemp("rgb")
    checkpoint = save_checkpoint(folder / "rgb.ckpt", config, step=0, net=build_unet(config.model))
    return export_step_artifact(checkpoint, folder / "rgb.sampler.lite.mindir", "ddim", 4)


def run_host(host: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    """ddpm-sample ARGS with no Python reachable: PATH is an empty folder, no PYTHONPATH."""
    empty = cwd / "empty-path"
    empty.mkdir(exist_ok=True)
    return subprocess.run([str(host), *map(str, args)], cwd=cwd, env={"PATH": str(empty)}, capture_output=True,
                          text=True, timeout=300)


def run_python(model: Path, work: Path, *args) -> Dict[str, np.ndarray]:
    """The Python runtime on the same artifact (tests/lite_step_loop.py ARGS), in a child process."""
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("lite_step_loop.py")), str(model),
                             str(work / "python.npz"), *map(str, args)],
                            capture_output=True, text=True, timeout=300, env={"GLOG_v": "3", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(work / "python.npz") as data:
        return dict(data)


def noise_file(model: Path, work: Path, seed: int) -> Path:
    """Normal noise for `model` in the host's --noise layout (numpy's generator: not the host's own stream)."""
    np.save(work / "noise.npy", np.random.default_rng(seed).standard_normal(noise_shape(model), np.float32))
    return work / "noise.npy"


def sampler_section(model: Path) -> dict:
    return json.loads(Path(f"{model}.json").read_text())["sampler"]


def noise_shape(model: Path) -> tuple:
    return (1 + sampler_section(model)["noise_steps"], N, 1, 8, 8)


def assert_same_images(cpp: np.ndarray, python: np.ndarray, channels: int = 1) -> None:
    assert cpp.shape == python.shape == (N, channels, 8, 8)
    assert np.abs(cpp - python).max() <= ATOL
    assert np.mean(to_uint8(cpp) == to_uint8(python)) >= UINT8_EQUAL


def grid_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_noise_file_same_images(name, host, step_artifacts, tmp_path):
    model = step_artifacts[name]
    noise = noise_file(model, tmp_path, 7)
    python = run_python(model, tmp_path, "--noise", noise)
    result = run_host(host, "--model", model, "--noise", noise, "--out", "grid.png", "--dump-float", "x.npy",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cpp = np.load(tmp_path / "x.npy")
    assert_same_images(cpp, python["x"])
    save_grid(tmp_path / "python-layout.png", to_uint8(cpp))  # runtime/images.py's layout, of the host's floats
    np.testing.assert_array_equal(grid_pixels(tmp_path / "grid.png"), grid_pixels(tmp_path / "python-layout.png"))


@pytest.mark.parametrize("name", SAMPLERS)
def test_seed_gives_the_images_of_the_python_runtime(name, host, step_artifacts, tmp_path):
    """--seed: x_T, then z for each noisy step, from ddpm::NoiseStream, as Sampler.sample(seed=...) draws them."""
    model = step_artifacts[name]
    python = run_python(model, tmp_path, "--seed", 3, "--n", N)
    result = run_host(host, "--model", model, "--seed", 3, "--n", N, "--out", "grid.png", "--dump-float", "x.npy",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cpp = np.load(tmp_path / "x.npy")
    assert_same_images(cpp, python["x"])
    assert np.mean(to_uint8(cpp) == python["images"]) >= UINT8_EQUAL


def test_grid_layout_of_a_count_that_is_not_square(host, step_artifacts, tmp_path):
    result = run_host(host, "--model", step_artifacts["ddim"], "--n", 5, "--out", "grid.png", "--dump-float", "x.npy",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    save_grid(tmp_path / "python-layout.png", to_uint8(np.load(tmp_path / "x.npy")))  # 3 columns, 2 rows
    np.testing.assert_array_equal(grid_pixels(tmp_path / "grid.png"), grid_pixels(tmp_path / "python-layout.png"))


def test_rgb_images(host, rgb_artifact, tmp_path):
    python = run_python(rgb_artifact, tmp_path, "--seed", 5, "--n", N)
    result = run_host(host, "--model", rgb_artifact, "--seed", 5, "--n", N, "--out", "grid.png", "--dump-float", "x.npy",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cpp = np.load(tmp_path / "x.npy")
    assert_same_images(cpp, python["x"], channels=3)
    assert np.mean(to_uint8(cpp) == python["images"]) >= UINT8_EQUAL
    save_grid(tmp_path / "python-layout.png", to_uint8(cpp))
    assert grid_pixels(tmp_path / "grid.png").shape[-1] == 3
    np.testing.assert_array_equal(grid_pixels(tmp_path / "grid.png"), grid_pixels(tmp_path / "python-layout.png"))


def test_fixed_batch_artifact_runs_in_chunks(host, tiny_checkpoint, tmp_path):
    """A fixed-batch artifact (batch 4) takes 10 images in three calls a step, the last padded, as in Python."""
    model = export_step_artifact(tiny_checkpoint, tmp_path / "fixed.sampler.lite.mindir", "ddpm", 4, "--batch", 4)
    python = run_python(model, tmp_path, "--seed", 2, "--n", 10)
    result = run_host(host, "--model", model, "--seed", 2, "--n", 10, "--out", "grid.png", "--dump-float", "x.npy",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cpp = np.load(tmp_path / "x.npy")
    assert cpp.shape == python["x"].shape == (10, 1, 8, 8)
    assert np.abs(cpp - python["x"]).max() <= ATOL


def test_frames_are_the_x0_previews(host, step_artifacts, tmp_path):
    model = step_artifacts["ddpm"]
    noise = noise_file(model, tmp_path, 8)
    python = run_python(model, tmp_path, "--noise", noise, "--x0")
    result = run_host(host, "--model", model, "--noise", noise, "--out", "grid.png", "--frames", "frames", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frames = sorted((tmp_path / "frames").iterdir())
    assert [f.name for f in frames] == [f"x0_{i:03d}.png" for i in range(SAMPLERS["ddpm"])]
    for frame, x0 in zip(frames, python["x0"]):
        save_grid(tmp_path / "expected.png", to_uint8(x0))
        assert np.mean(grid_pixels(frame) == grid_pixels(tmp_path / "expected.png")) >= UINT8_EQUAL


def test_the_host_links_no_python(host):
    result = subprocess.run(["ldd", str(host)], capture_output=True, text=True)
    assert result.returncode == 0 and "libmindspore-extendrt_python" in result.stdout
    assert "libpython" not in result.stdout


# ---- bad input: one error line, exit 2, no output file -------------------------------------------------


@pytest.fixture
def damaged(step_artifacts, tmp_path) -> Path:
    """A private copy of the DDPM artifact and its manifest, to damage."""
    model = tmp_path / "model.lite.mindir"
    model.write_bytes(step_artifacts["ddpm"].read_bytes())
    Path(f"{model}.json").write_text(Path(f"{step_artifacts['ddpm']}.json").read_text())
    return model


def assert_refused(result: subprocess.CompletedProcess, folder: Path, *fragments: str) -> None:
    assert_clean_error(result, *fragments)
    assert not (folder / "grid.png").exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_missing_model(host, tmp_path):
    assert_refused(run_host(host, "--model", "nowhere.lite.mindir", "--out", "grid.png", cwd=tmp_path), tmp_path,
                   "model not found", "nowhere.lite.mindir")


def test_model_that_does_not_match_its_manifest(host, damaged, tmp_path):
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert_refused(run_host(host, "--model", damaged, "--out", "grid.png", cwd=tmp_path), tmp_path,
                   "does not match its manifest", "sha256")


def test_manifest_without_sampler(host, damaged, tmp_path):
    manifest = json.loads(Path(f"{damaged}.json").read_text())
    del manifest["sampler"]
    Path(f"{damaged}.json").write_text(json.dumps(manifest))
    assert_refused(run_host(host, "--model", damaged, "--out", "grid.png", cwd=tmp_path), tmp_path,
                   "not a sampler-step manifest")


@pytest.mark.parametrize("shape", [(10, N, 1, 8, 7), (9, N, 1, 8, 8), (N, 1, 8, 8)])
def test_noise_of_the_wrong_shape(host, damaged, tmp_path, shape):
    np.save(tmp_path / "noise.npy", np.zeros(shape, np.float32))
    assert_refused(run_host(host, "--model", damaged, "--noise", "noise.npy", "--out", "grid.png", cwd=tmp_path),
                   tmp_path, "noise file noise.npy has shape", "expected (10, 16, 1, 8, 8)")


def test_noise_of_the_wrong_type(host, damaged, tmp_path):
    np.save(tmp_path / "noise.npy", np.zeros((10, N, 1, 8, 8), np.float64))
    assert_refused(run_host(host, "--model", damaged, "--noise", "noise.npy", "--out", "grid.png", cwd=tmp_path),
                   tmp_path, "must hold float32")


@pytest.mark.parametrize("out", ["missing-folder/grid.png", "a-file/grid.png", "folder.png", "grid.jpg"])
def test_unwritable_output(host, damaged, tmp_path, out):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "folder.png").mkdir()
    result = run_host(host, "--model", damaged, "--out", out, cwd=tmp_path)
    assert_refused(result, tmp_path, "output" if out != "grid.jpg" else "name a .png file")
    assert not (tmp_path / "grid.jpg").exists()


def test_unwritable_float_dump_writes_no_grid(host, damaged, tmp_path):
    assert_refused(run_host(host, "--model", damaged, "--out", "grid.png", "--dump-float", "missing/x.npy",
                            cwd=tmp_path), tmp_path, "output directory does not exist")


@pytest.mark.parametrize("args, fragment", [(["--n", "0"], "--n must be an integer"), (["--seed", "-1"], "--seed"),
                                            (["--bogus", "1"], "unknown option --bogus"), (["--n"], "--n needs a value"),
                                            (["--seed", "1", "--noise", "noise.npy"], "not both")])
def test_bad_arguments(host, damaged, tmp_path, args, fragment):
    assert_refused(run_host(host, "--model", damaged, "--out", "grid.png", *args, cwd=tmp_path), tmp_path, fragment)
