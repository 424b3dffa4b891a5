"""`cli.py export` and `cli.py verify` end to end, on the tiny checkpoint: round trips at several batch
sizes, the ONNX full check, the manifest, a MindSpore-free consumer, and the gate catching wrong artifacts."""
from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import REPO, assert_clean_error, checkpoint_with_changed_weight, run_cli, tiny_config
from ms_ddpm.runtime.files import sha256_file
from ms_ddpm.runtime.manifest import Manifest, manifest_path_for
from ms_ddpm.runtime.schedules import ScheduleTables

ROUND_TRIP_ATOL = 1e-4


@pytest.fixture(scope="module")
def run_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """A run directory as training leaves it: RUN/checkpoints/latest.ckpt (with a space in its path,
    which MindSpore's exporters refuse to write to directly)."""
    run = tmp_path_factory.mktemp("run") / "my run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "checkpoints" / "latest.ckpt")
    return run


def _export(run: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_cli("export", "--checkpoint", run, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def onnx_artifact(run_dir) -> Path:
    _export(run_dir, "--format", "onnx")
    return run_dir / "export" / "unet.onnx"  # the documented default --out


@pytest.fixture(scope="module")
def mindir_artifact(run_dir) -> Path:
    _export(run_dir, "--format", "mindir")
    return run_dir / "export" / "unet.mindir"


@pytest.fixture(scope="module")
def source_net(tiny_checkpoint):
    from ms_ddpm.train.checkpoint import load_model

    return load_model(tiny_checkpoint)[0]


def _random_inputs(batch: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, batch).astype(np.int32)


def _source_eps(net, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    from mindspore import Tensor

    return net(Tensor(x), Tensor(t)).asnumpy()


def test_onnx_runs_at_any_batch_size_and_matches_mindspore(onnx_artifact, source_net):
    session = ort.InferenceSession(str(onnx_artifact), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("x", ["batch", 1, 8, 8]), ("t", ["batch"])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("eps", ["batch", 1, 8, 8])]
    for batch in (1, 5, 16, 64):
        x, t = _random_inputs(batch)
        eps = session.run(["eps"], {"x": x, "t": t})[0]
        assert eps.shape == x.shape
        assert np.max(np.abs(eps - _source_eps(source_net, x, t))) <= ROUND_TRIP_ATOL, batch


def test_onnx_passes_the_full_check_without_the_exporter_defects(onnx_artifact):
    model = onnx.load(str(onnx_artifact))
    onnx.checker.check_model(model, full_check=True)
    conv_transposes = [node for node in model.graph.node if node.op_type == "ConvTranspose"]
    assert conv_transposes and not any(a.name == "output_shape" for n in conv_transposes for a in n.attribute)
    assert [o.name for o in model.graph.output] == ["eps"]
    assert Manifest.load(manifest_path_for(onnx_artifact)).opset == model.opset_import[0].version == 20  # optimised


def test_mindir_reloads_at_any_batch_size_and_matches_mindspore_exactly(mindir_artifact, source_net):
    import mindspore as ms
    from mindspore import Tensor, nn

    graph = nn.GraphCell(ms.load(str(mindir_artifact)))
    for batch in (1, 5, 16):
        x, t = _random_inputs(batch)
        eps = graph(Tensor(x), Tensor(t)).asnumpy()
        assert eps.shape == x.shape
        assert np.max(np.abs(eps - _source_eps(source_net, x, t))) <= 1e-6, batch


@pytest.mark.parametrize("artifact_fixture", ["onnx_artifact", "mindir_artifact"])
def test_manifest_alone_rebuilds_the_schedule_and_describes_the_artifact(artifact_fixture, request, tiny_checkpoint):
    artifact = request.getfixturevalue(artifact_fixture)
    manifest = Manifest.load(manifest_path_for(artifact))
    config = tiny_config()
    expected = ScheduleTables.from_name(config.diffusion.schedule, config.diffusion.timesteps)
    assert np.array_equal(manifest.tables().betas, expected.betas)
    assert np.array_equal(manifest.tables().sqrt_one_minus_alphas_cumprod, expected.sqrt_one_minus_alphas_cumprod)
    assert manifest.run_config == config
    assert manifest.artifact == artifact.name and manifest.artifact_sha256 == sha256_file(artifact)
    assert manifest.source_checkpoint_sha256 == sha256_file(tiny_checkpoint)
    assert manifest.package_version == metadata.version("ms-ddpm")
    assert manifest.batch == {"policy": "dynamic"} and manifest.inputs[0].shape == ["batch", 1, 8, 8]
    report = manifest.verification
    assert report["passed"] and report["worst_max_abs"] <= 1e-4 and report["worst_cosine"] >= 0.99999
    assert {case["batch"] for case in report["cases"]} == {1, 5, 16, 64}
    assert min(c["t_min"] for c in report["cases"]) == 0 and max(c["t_max"] for c in report["cases"]) == 9


CONSUMER = """
import sys
import numpy as np
import onnxruntime as ort
from ms_ddpm.runtime.manifest import Manifest, manifest_path_for

artifact = sys.argv[1]
manifest = Manifest.load(manifest_path_for(artifact))
tables = manifest.tables()
session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((3, manifest.channels, manifest.image_size, manifest.image_size), dtype=np.float32)
t = np.array([0, 4, manifest.timesteps - 1], np.int32)
eps = session.run([manifest.outputs[0].name], {manifest.inputs[0].name: x, manifest.inputs[1].name: t})[0]
x_prev_mean = tables.sqrt_recip_alphas[t, None, None, None] * (x - tables.betas[t, None, None, None]
                                                               / tables.sqrt_one_minus_alphas_cumprod[t, None, None, None] * eps)
assert np.isfinite(x_prev_mean).all() and eps.shape == x.shape
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("mindspore", "mindspore_lite"))
print("mindspore modules:", loaded)
"""


def test_a_consumer_samples_a_step_from_artifact_and_manifest_without_mindspore(onnx_artifact, tmp_path):
    moved = tmp_path / "deploy" / "model.onnx"  # away from the checkpoint, renamed: only the pair matters
    moved.parent.mkdir()
    shutil.copy(onnx_artifact, moved)
    shutil.copy(manifest_path_for(onnx_artifact), manifest_path_for(moved))
    result = subprocess.run([sys.executable, "-c", CONSUMER, str(moved)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mindspore modules: []" in result.stdout


def test_export_commands_module_does_not_load_mindspore():
    probe = "import sys, ms_ddpm.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mindspore'))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


def test_verify_passes_a_correct_export(onnx_artifact, run_dir):
    result = run_cli("verify", onnx_artifact, "--checkpoint", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gate: PASS" in result.stdout and "note:" not in result.stdout
    assert len([line for line in result.stdout.splitlines() if line.rstrip().endswith(" ok")]) == 4


def test_verify_catches_one_weight_of_the_onnx_scaled_by_1_01(onnx_artifact, run_dir, tmp_path):
    model = onnx.load(str(onnx_artifact))
    weight = next(init for init in model.graph.initializer if init.name == "final_conv.1.weight")
    scaled = onnx.numpy_helper.to_array(weight) * np.float32(1.01)
    weight.CopyFrom(onnx.numpy_helper.from_array(scaled, weight.name))
    tampered = tmp_path / "unet.onnx"
    onnx.save(model, str(tampered))
    shutil.copy(manifest_path_for(onnx_artifact), manifest_path_for(tampered))
    result = run_cli("verify", tampered, "--checkpoint", run_dir)
    assert_clean_error(result, "does not compute", code=1)
    assert "gate: FAIL" in result.stdout and "sha256 differs" in result.stdout


def test_verify_catches_a_mindir_against_a_model_with_one_weight_changed(mindir_artifact, tiny_checkpoint, tmp_path):
    changed = checkpoint_with_changed_weight(tiny_checkpoint, tmp_path / "changed.ckpt", 1.01)
    result = run_cli("verify", mindir_artifact, "--checkpoint", changed)
    assert_clean_error(result, "does not compute", code=1)
    assert "gate: FAIL" in result.stdout and "not the file the artifact was exported from" in result.stdout


def test_fixed_batch_no_verify_export_is_marked_and_refuses_other_batches(run_dir, tmp_path):
    out = tmp_path / "fixed.onnx"
    result = _export(run_dir, "--format", "onnx", "--batch", "3", "--no-verify", "--out", out)
    assert "WARNING" in result.stderr and "NOT verified" in result.stderr
    manifest = Manifest.load(manifest_path_for(out))
    assert manifest.batch == {"policy": "fixed", "size": 3} and manifest.fixed_batch == 3
    assert manifest.verification["skipped"] is True and "NOT verified" in manifest.verification["warning"]
    assert manifest.inputs[0].shape == [3, 1, 8, 8] and manifest.outputs[0].shape == [3, 1, 8, 8]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, t = _random_inputs(4)
    with pytest.raises(Exception, match="dimensions"):
        session.run(["eps"], {"x": x, "t": t})
    verified = run_cli("verify", out, "--checkpoint", run_dir)
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert "gate: PASS" in verified.stdout and verified.stdout.count("\n    3 ") == 3


def test_an_export_that_fails_the_gate_leaves_nothing_behind(run_dir, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_cli("export", "--checkpoint", run_dir, "--format", "onnx", "--out", out_dir / "unet.onnx", "--atol", "0")
    assert_clean_error(result, "failed the numeric gate", code=1)
    assert "gate: FAIL" in result.stderr
    assert list(out_dir.iterdir()) == []
