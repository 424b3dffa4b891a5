"""MindSpore Lite: the native bridge builds, the converter turns the exporter's ONNX into a Lite model,
and the `mslite` backend agrees with onnxruntime. Bad inputs give one-line errors, never a crash.

This process imports MindSpore (here and in other tests), so Lite only ever runs in child processes.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ms_ddpm.runtime.errors import ToolkitError
from conftest import REPO, assert_clean_error, tiny_config

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason=f"MindSpore Lite's only PyPI wheel is x86_64 Linux; this is {sys.platform}/{platform.machine()}")

ATOL = 5e-4


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GLOG_v": "3"})


@pytest.fixture(scope="session")
def lite_ready() -> str:
    """Build the bridge the way `make` does; returns the line naming the active path."""
    result = _python("-m", "ms_ddpm.runtime.mslite.build")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> dict:
    """The exporter's ONNX of one untrained tiny U-Net: dynamic batch, and fixed batch 2.

    (Two copies of the net: MindSpore 2.10 fails to export the same cell instance twice.)"""
    import mindspore as ms

    from ms_ddpm.export.onnx_export import export
    from ms_ddpm.train.model import build_unet

    ms.set_seed(0)
    model = tiny_config().model
    nets = [build_unet(model) for _ in range(2)]
    ms.load_param_into_net(nets[1], nets[0].parameters_dict())
    folder = tmp_path_factory.mktemp("mslite")
    paths = {"dynamic": folder / "tiny.onnx", "fixed": folder / "tiny_b2.onnx"}
    for net, (kind, path) in zip(nets, paths.items()):
        net.set_train(False)
        export(net, model, path, batch=None if kind == "dynamic" else 2, opset=None)
    return paths


@pytest.fixture(scope="session")
def tiny_lite(tiny_onnx, lite_ready) -> dict:
    from ms_ddpm.runtime.mslite import convert_onnx

    return {kind: convert_onnx(path, path.with_suffix(".mindir")) for kind, path in tiny_onnx.items()}


def _cases(*batches: int) -> list:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((b, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, b).astype(np.int32))
            for b in batches]


def _onnxruntime(path: Path, cases: list) -> list:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, {"x": x, "t": t})[0] for x, t in cases]


def test_build_is_idempotent_and_names_the_path(lite_ready):
    assert "MindSpore Lite" in lite_ready and ("native bridge" in lite_ready or "official" in lite_ready)
    again = _python("-m", "ms_ddpm.runtime.mslite.build")
    assert again.returncode == 0 and "compiling" not in again.stdout and "downloading" not in again.stdout


def test_convert_writes_only_the_model(tiny_lite):
    folder = tiny_lite["dynamic"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.mindir", "tiny.onnx", "tiny_b2.mindir", "tiny_b2.onnx"]


def test_lite_matches_onnxruntime(tiny_onnx, tiny_lite):
    from ms_ddpm.runtime.mslite.child import predict_in_child

    cases = _cases(1, 5, 1)  # back to 1: the dynamic model is resized each time
    lite_eps = predict_in_child(tiny_lite["dynamic"], cases, threads=1)
    for lite, ref in zip(lite_eps, _onnxruntime(tiny_onnx["dynamic"], cases)):
        assert lite.shape == ref.shape and lite.dtype == np.float32
        np.testing.assert_allclose(lite, ref, rtol=0, atol=ATOL)


def test_fixed_batch_model_runs_in_chunks(tiny_onnx, tiny_lite):
    from ms_ddpm.runtime.mslite.child import predict_in_child

    cases = _cases(5, 1)  # chunks of 2: 2 + 2 + 1 padded; 1 padded
    for lite, ref in zip(predict_in_child(tiny_lite["fixed"], cases), _onnxruntime(tiny_onnx["dynamic"], cases)):
        np.testing.assert_allclose(lite, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("x_shape, t_shape, fragment", [
    ((2, 1, 8, 9), (2,), "x must have shape (B, 1, 8, 8)"),
    ((2, 1, 8, 8), (3,), "t must be integer timesteps of shape (2,)"),
])
def test_wrong_input_shapes_are_refused(tiny_lite, x_shape, t_shape, fragment):
    from ms_ddpm.runtime.mslite.child import predict_in_child

    with pytest.raises(ToolkitError, match="^" + re.escape(fragment)):
        predict_in_child(tiny_lite["dynamic"], [(np.zeros(x_shape, np.float32), np.zeros(t_shape, np.int32))])


def test_bad_model_files_are_refused(tmp_path, tiny_onnx, lite_ready):
    from ms_ddpm.runtime.mslite.child import predict_in_child

    case = _cases(1)
    not_lite = tmp_path / "onnx_in_disguise.mindir"
    not_lite.write_bytes(tiny_onnx["dynamic"].read_bytes())
    for path, fragment in [(tiny_onnx["dynamic"], "not a MindSpore Lite model"),
                           (not_lite, "cannot load it as a cloud MindIR model"),
                           (tmp_path / "missing.mindir", "MindSpore Lite model not found")]:
        with pytest.raises(ToolkitError, match=fragment):
            predict_in_child(path, case)


def test_converter_rejection_is_one_clean_line(tmp_path, lite_ready):
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [4]) for name in "xy")
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y])
    garbage = tmp_path / "garbage.onnx"  # well-formed ONNX (random bytes never reach the converter: see
    garbage.write_bytes(helper.make_model(graph).SerializeToString())  # runtime/onnx_external.py)
    result = _python("-m", "ms_ddpm.runtime.mslite.convert", str(garbage), str(tmp_path / "out.mindir"))
    assert_clean_error(result, "the Lite converter rejected", "NoSuchOp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.onnx"]  # no output, no temporary left


def test_lite_and_mindspore_never_share_a_process(tiny_lite):
    import mindspore  # noqa: F401  (this test process has MindSpore, as the exporter does)

    from ms_ddpm.runtime.mslite import MsliteBackend

    with pytest.raises(ToolkitError, match="imported mindspore"):
        MsliteBackend(tiny_lite["dynamic"])
    script = ("from ms_ddpm.runtime.mslite import MsliteBackend; import sys; MsliteBackend(sys.argv[1])\n"
              "try:\n    import mindspore\nexcept ImportError as exc:\n    print(exc)")
    result = _python("-c", script, str(tiny_lite["dynamic"]))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cannot be imported into a process that has loaded MindSpore Lite" in result.stdout


def test_missing_bridge_says_how_to_build(tmp_path, tiny_lite, monkeypatch):
    from ms_ddpm.runtime.mslite.child import predict_in_child

    if importlib.util.find_spec("mindspore_lite") is not None:  # found, not imported: MindSpore is loaded here
        pytest.skip("a mindspore_lite package is installed here: the official API may be used, not the bridge")
    monkeypatch.setenv("MSLITE_CACHE", str(tmp_path))  # an empty cache: no bridge built there
    with pytest.raises(ToolkitError, match=r"native bridge not built .* run `.* -m ms_ddpm\.runtime\.mslite\.build`"):
        predict_in_child(tiny_lite["dynamic"], _cases(1))
