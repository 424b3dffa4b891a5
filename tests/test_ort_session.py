"""The runtime's onnxruntime sessions (runtime/ort_session.py): thread spinning, and the cached
onnxruntime-optimised model beside the artifact: created, reused, and rebuilt whenever the artifact, the
onnxruntime version, the CPU or the cached file itself differ from what its record says."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import List

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ms_ddpm.runtime import ort_session
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.ort_session import CACHE_ENV, SPINNING_ENV, OptimizedModelCache, create_session

PROVIDERS = ["CPUExecutionProvider"]
X = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32)


def write_artifact(path: Path, weight_scale: float = 1.0) -> Path:
    """A small Conv -> Relu -> Conv model (onnxruntime fuses and lays it out differently when optimising)."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * weight_scale).astype(np.float32), f"w{i}")
               for i in range(2)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8, 6, 6])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class SpyOrt(SimpleNamespace):
    """onnxruntime, recording which file each session was created from."""

    def __init__(self, version: str = ort.__version__):
        super().__init__(SessionOptions=ort.SessionOptions, GraphOptimizationLevel=ort.GraphOptimizationLevel,
                         __version__=version, loaded=[])

    def InferenceSession(self, path, options, providers):  # noqa: N802 - onnxruntime's name
        self.loaded.append(Path(path).name)
        return ort.InferenceSession(path, options, providers=providers)


@pytest.fixture(autouse=True)
def cache_on(monkeypatch):
    """The cache is opt-in (MS_DDPM_ORT_CACHE=1): these tests turn it on, except where they say otherwise."""
    monkeypatch.setenv(CACHE_ENV, "1")


def open_session(artifact: Path, spy: SpyOrt = None):
    """A session on `artifact`, found good: its cache is saved."""
    session, keep_cache = create_session(spy or SpyOrt(), artifact, PROVIDERS, 1)
    keep_cache()
    return session


def open_twice(artifact: Path, second: SpyOrt = None) -> List[str]:
    """Open `artifact` twice (the second time with `second`); the files the sessions were created from."""
    first_ort, second_ort = SpyOrt(), second or SpyOrt()
    first = open_session(artifact, first_ort)
    again = open_session(artifact, second_ort)
    np.testing.assert_allclose(again.run(None, {"x": X})[0], first.run(None, {"x": X})[0], rtol=1e-5, atol=1e-5)
    return first_ort.loaded + second_ort.loaded


def cache_of(artifact: Path) -> OptimizedModelCache:
    return OptimizedModelCache(artifact, ort.__version__, PROVIDERS)


def test_the_cache_is_created_then_reused(tmp_path):
    artifact = write_artifact(tmp_path / "unet.onnx")
    assert open_twice(artifact) == ["unet.onnx", "unet.onnx.ort-cache.onnx"]
    cache = cache_of(artifact)
    record = json.loads(cache.record.read_text())
    assert record["key"]["artifact_sha256"] == cache.key["artifact_sha256"] and cache.valid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.onnx.ort-cache.json", "unet.onnx.ort-cache.onnx"]


def test_nothing_is_written_until_the_session_is_found_good(tmp_path):
    artifact = write_artifact(tmp_path / "unet.onnx")
    session, _ = create_session(SpyOrt(), artifact, PROVIDERS, 1)  # e.g. the manifest check failed: not kept
    assert session.run(None, {"x": X})[0].shape == X.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx"]


@pytest.mark.filterwarnings("ignore:Duplicate provider")
def test_the_cache_is_for_the_cpu_provider_only(tmp_path):
    artifact = write_artifact(tmp_path / "unet.onnx")
    _, keep_cache = create_session(SpyOrt(), artifact, ["CPUExecutionProvider", "CPUExecutionProvider"], 1)
    keep_cache()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx"]


def test_a_changed_artifact_rebuilds_the_cache(tmp_path):
    artifact = write_artifact(tmp_path / "unet.onnx")
    open_session(artifact)
    write_artifact(artifact, weight_scale=2.0)  # same name, other weights: the old cache must not be used
    spy = SpyOrt()
    session = open_session(artifact, spy)
    assert spy.loaded == ["unet.onnx"] and cache_of(artifact).valid()
    expected = ort.InferenceSession(str(artifact), providers=PROVIDERS).run(None, {"x": X})[0]
    np.testing.assert_allclose(session.run(None, {"x": X})[0], expected, rtol=1e-5, atol=1e-4)


def test_another_onnxruntime_version_rebuilds_the_cache(tmp_path):
    artifact = write_artifact(tmp_path / "unet.onnx")
    assert open_twice(artifact, SpyOrt(version="0.0.1")) == ["unet.onnx", "unet.onnx"]


def test_another_cpu_rebuilds_the_cache(tmp_path, monkeypatch):
    artifact = write_artifact(tmp_path / "unet.onnx")
    open_session(artifact)
    monkeypatch.setattr(ort_session, "cpu_fingerprint", lambda: "another-cpu")
    spy = SpyOrt()
    open_session(artifact, spy)
    assert spy.loaded == ["unet.onnx"]
    assert json.loads(cache_of(artifact).record.read_text())["key"]["cpu"] == "another-cpu"


def test_a_damaged_cached_model_is_not_trusted(tmp_path):
    artifact = write_artifact(tmp_path / "unet.onnx")
    open_session(artifact)
    cached = cache_of(artifact).model
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")
    spy = SpyOrt()
    open_session(artifact, spy)
    assert spy.loaded == ["unet.onnx"] and cache_of(artifact).valid()


def test_an_unwritable_folder_runs_without_a_cache(tmp_path, monkeypatch, caplog):
    artifact = write_artifact(tmp_path / "unet.onnx")

    def read_only(path, data):
        raise ToolkitError(f"output directory is not writable: {Path(path).parent} (Read-only file system)")

    monkeypatch.setattr(ort_session, "write_bytes_atomic", read_only)
    with caplog.at_level(logging.DEBUG, logger=ort_session.__name__):
        session = open_session(artifact)
    assert session.run(None, {"x": X})[0].shape == X.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx"]
    assert "no onnxruntime model cache" in caplog.text and "Read-only" in caplog.text


@pytest.mark.parametrize("value", [None, "0"])
def test_the_cache_is_off_by_default_and_can_be_turned_off(value, tmp_path, monkeypatch):
    if value is None:
        monkeypatch.delenv(CACHE_ENV)
    else:
        monkeypatch.setenv(CACHE_ENV, value)
    artifact = write_artifact(tmp_path / "unet.onnx")
    assert open_twice(artifact) == ["unet.onnx", "unet.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx"]


@pytest.mark.parametrize("value, expected", [(None, "0"), ("1", "1"), ("0", "0")])
def test_thread_spinning_is_off_unless_asked_for(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(SPINNING_ENV, raising=False)
    else:
        monkeypatch.setenv(SPINNING_ENV, value)
    options = ort_session.session_options(ort, threads=2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    assert options.intra_op_num_threads == 2
