"""The `openvino` runtime backend on the tiny U-Net and a sampler-step artifact: the same eps and images as
onnxruntime, one-line errors, the install hint, the gate through it (`verify --backend openvino`) and the bf16
mode's own end-to-end threshold (`verify --precision bf16`, runtime/equivalence.py)."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from conftest import assert_clean_error, checkpoint_with_changed_weight, run_cli, tiny_config
from ms_ddpm.runtime.backends import BACKENDS, backend_for_format, open_backend
from ms_ddpm.runtime.equivalence import PRECISION_PSNR_MIN_DB, check_precision, precision_figures
from ms_ddpm.runtime.errors import ToolkitError, VerificationFailed
from ms_ddpm.runtime.manifest import Manifest, SamplerSettings, TensorSpec, manifest_path_for
from ms_ddpm.runtime.pipeline import Sampler
from test_runtime import export_artifact

pytest.importorskip("openvino")
T = tiny_config().diffusion.timesteps
EPS_ATOL = 1e-4  # measured: 1e-6 on the tiny U-Net, 2.6e-6 on the tutorial-size one
# uint8 images, same seed: identical on the tiny U-Net (measured); tutorial-size: at most 1 level, on 0.008% of pixels
MAX_LEVELS, MAX_DIFFERING = 1, 1e-3


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    return export_artifact(tiny_checkpoint, tmp_path_factory.mktemp("ov") / "unet.onnx")


@pytest.fixture(scope="module")
def step_onnx(tiny_checkpoint, tmp_path_factory):
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint

    return export_checkpoint(tiny_checkpoint, ExportRequest(
        format="onnx", out=tmp_path_factory.mktemp("ov-step") / "unet.sampler.onnx", gate=None,
        sampler=SamplerSettings("dpmpp-sde", 4)), log=lambda _: None)


@pytest.fixture(scope="module")
def bf16(tiny_onnx) -> bool:
    """Whether this CPU runs bf16 in OpenVINO (AMX or AVX512-BF16)."""
    try:
        Sampler.load(tiny_onnx, "openvino", precision="bf16")
    except ToolkitError as exc:
        if "no bf16 support" not in str(exc):
            raise
        return False
    return True


def assert_same_images(expected: np.ndarray, got: np.ndarray) -> None:
    levels = np.abs(expected.astype(int) - got.astype(int))
    assert levels.max() <= MAX_LEVELS and (levels > 0).mean() <= MAX_DIFFERING, (levels.max(), (levels > 0).mean())


def test_onnxruntime_stays_the_onnx_default_and_openvino_is_registered():
    assert backend_for_format("onnx") == "onnxruntime"
    assert BACKENDS["openvino"].format == "onnx" and BACKENDS["openvino"].precisions[0] == "fp32"


def test_eps_equals_onnxruntime(tiny_onnx):
    ort, openvino = Sampler.load(tiny_onnx), Sampler.load(tiny_onnx, "openvino", threads=1)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8), dtype=np.float32)
    t = np.array([0, 2, 5, 7, T - 1], np.int32)
    assert np.abs(openvino.backend(x, t) - ort.backend(x, t)).max() <= EPS_ATOL  # fp32: bf16 would be ~1e-2 off
    assert openvino.backend.name == "openvino"


@pytest.mark.parametrize("scheduler", [None, "ddpm"])
def test_images_equal_onnxruntimes_for_the_same_seed(tiny_onnx, scheduler):
    expected = Sampler.load(tiny_onnx).sample(6, scheduler, seed=3)
    assert_same_images(expected, Sampler.load(tiny_onnx, "openvino", batch=4).sample(6, scheduler, seed=3))


def test_sampler_step_artifact_runs_on_openvino(step_onnx):
    expected = Sampler.load(step_onnx).sample(5, seed=1)
    assert_same_images(expected, Sampler.load(step_onnx, "openvino").sample(5, seed=1))


def _manifest(artifact) -> Manifest:
    return Manifest.load(manifest_path_for(artifact))


def test_corrupt_artifact_is_one_line(tiny_onnx, tmp_path):
    garbage = tmp_path / "unet.onnx"
    garbage.write_bytes(tiny_onnx.read_bytes()[:2000])
    with pytest.raises(ToolkitError, match="corrupt or unreadable ONNX artifact") as error:
        open_backend("openvino", garbage, _manifest(tiny_onnx))
    assert "\n" not in str(error.value) and "Exception from" not in str(error.value)


@pytest.mark.parametrize("change, fragment", [
    (lambda m: dataclasses.replace(m, inputs=[TensorSpec("x", "float32", ["batch", 1, 16, 16]), m.inputs[1]]), "16"),
    (lambda m: dataclasses.replace(m, outputs=[TensorSpec("noise", "float32", m.outputs[0].shape)]), "noise"),
    (lambda m: dataclasses.replace(m, inputs=[m.inputs[0], TensorSpec("t", "int64", ["batch"])]), "int64"),
], ids=["shape", "name", "dtype"])
def test_manifest_mismatch_is_one_line(tiny_onnx, change, fragment):
    with pytest.raises(ToolkitError, match="does not match its manifest") as error:
        open_backend("openvino", tiny_onnx, change(_manifest(tiny_onnx)))
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_precision_is_checked_per_backend(tiny_onnx):
    with pytest.raises(ToolkitError, match=r"onnxruntime backend runs fp32, not 'bf16' \(bf16: --backend openvino\)"):
        Sampler.load(tiny_onnx, precision="bf16")
    with pytest.raises(ToolkitError, match="runs fp32 or bf16, not 'fp16'"):
        Sampler.load(tiny_onnx, "openvino", precision="fp16")
    with pytest.raises(ToolkitError, match="execution providers apply to the onnxruntime backend only"):
        Sampler.load(tiny_onnx, "openvino", providers=["CPUExecutionProvider"])


def test_missing_openvino_names_the_install_command(tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(ToolkitError, match=r"openvino backend needs openvino, which is not installed: pip install openvino"):
        Sampler.load(tiny_onnx, "openvino")


def test_cli_samples_on_openvino_and_hints_the_install(tiny_onnx, tmp_path):
    npz = tmp_path / "images.npz"
    result = run_cli("sample", "--artifact", tiny_onnx, "--backend", "openvino", "--n", "3", "--seed", "2",
                     "--out", tmp_path / "grid.png", "--npz", npz)
    assert result.returncode == 0 and "openvino" in result.stdout, result.stderr[-2000:]
    with np.load(npz, allow_pickle=False) as saved:
        assert_same_images(Sampler.load(tiny_onnx).sample(3, seed=2), saved["images"])
    hidden = tmp_path / "hide" / "openvino"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    result = run_cli("sample", "--artifact", tiny_onnx, "--backend", "openvino", "--out", tmp_path / "other.png",
                     env={"PYTHONPATH": str(hidden.parent)})
    assert_clean_error(result, "openvino", "not installed", "pip install openvino")
    assert not (tmp_path / "other.png").exists()


def test_bf16_images_meet_their_threshold(tiny_onnx, bf16):
    if not bf16:
        pytest.skip("this CPU has no bf16 in OpenVINO (needs AMX or AVX512-BF16)")
    figures = precision_figures(tiny_onnx, "openvino", "bf16")
    assert PRECISION_PSNR_MIN_DB["bf16"] <= figures["psnr_db"] < 100, figures  # bf16 is on: not fp32's bytes


def test_bf16_check_fails_below_its_threshold(tiny_onnx, bf16, monkeypatch):
    if not bf16:
        pytest.skip("this CPU has no bf16 in OpenVINO (needs AMX or AVX512-BF16)")
    monkeypatch.setitem(PRECISION_PSNR_MIN_DB, "bf16", 200.0)
    with pytest.raises(VerificationFailed, match=r"strays from its fp32 images: .*FAIL"):
        check_precision(tiny_onnx, "openvino", "bf16", log=lambda _: None)


def test_verify_through_openvino_passes_a_good_artifact(tiny_onnx, tiny_checkpoint, bf16):
    """The fp32 gate on OpenVINO, the end-to-end check, and bf16's own check where the CPU has bf16."""
    result = run_cli("verify", tiny_onnx, "--checkpoint", tiny_checkpoint, "--backend", "openvino", "--end-to-end",
                     *(["--precision", "bf16"] if bf16 else []))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "numeric gate (openvino" in output and "gate: PASS" in output and "end-to-end DDPM" in output
    assert not bf16 or "bf16 vs fp32 on openvino" in output


def test_verify_through_openvino_fails_other_weights(tiny_onnx, tiny_checkpoint, tmp_path):
    other = checkpoint_with_changed_weight(tiny_checkpoint, tmp_path / "other.ckpt", 1.01)
    result = run_cli("verify", tiny_onnx, "--checkpoint", other, "--backend", "openvino")
    assert result.returncode == 1 and "gate: FAIL" in result.stdout, result.stderr[-2000:]


def test_verify_step_artifact_through_openvino(step_onnx, tiny_checkpoint):
    result = run_cli("verify", step_onnx, "--checkpoint", tiny_checkpoint, "--backend", "openvino")
    assert result.returncode == 0 and "openvino, dpmpp-sde" in result.stdout, (result.stdout + result.stderr)[-3000:]


def test_verify_refuses_a_precision_the_backend_lacks(tiny_onnx, tiny_checkpoint):
    assert_clean_error(run_cli("verify", tiny_onnx, "--checkpoint", tiny_checkpoint, "--precision", "bf16"),
                       "onnxruntime backend runs fp32", "--backend openvino")
