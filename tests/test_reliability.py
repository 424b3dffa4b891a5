"""Reliability beyond single bad inputs: non-finite guards, determinism across processes, safe loading,
concurrency, and the crash-safe writer's housekeeping (docs/reliability.md)."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import LITE_PLATFORM, REPO, run_cli, tiny_config
from ms_ddpm.runtime.backends import Backend
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.files import atomic_path, sha256_file, write_text_atomic
from ms_ddpm.runtime.manifest import Manifest, manifest_path_for
from ms_ddpm.runtime.pipeline import Sampler

LITE = pytest.mark.skipif(not LITE_PLATFORM, reason="MindSpore Lite's only PyPI wheel is x86_64 Linux")


# ---- non-finite guards -------------------------------------------------------------------------------
def test_training_skips_short_non_finite_runs_and_stops_on_long_ones_keeping_a_good_checkpoint(tmp_path, monkeypatch):
    """With the tutorial's loss scaler on: NaN batches at steps 2-4 are skipped (no update) and training goes
    on; from step 8 on every batch is NaN, so after MAX_NONFINITE_STEPS training stops with one line."""
    import dataclasses

    from ms_ddpm.train import trainer as trainer_module
    from ms_ddpm.train.checkpoint import load_checkpoint
    from ms_ddpm.train.data import load_images, to_model_range

    config = tiny_config(loss_scale=True)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=30, checkpoint_every=2))
    poisoned = {2, 3, 4} | set(range(8, 30))
    original = trainer_module.BatchSampler.batch

    def batch(self, step):
        x0, t, noise = original(self, step)
        return x0, t, noise * np.float32(np.nan) if step in poisoned else noise

    monkeypatch.setattr(trainer_module.BatchSampler, "batch", batch)
    images = to_model_range(load_images("digits", 8, 1))[:64]
    with pytest.raises(ToolkitError, match=f"not finite for {trainer_module.MAX_NONFINITE_STEPS} consecutive steps"):
        trainer_module.train(config, images, tmp_path, show_progress=False)
    kept = load_checkpoint(tmp_path)  # loads: every tensor is finite
    assert kept.step == 16  # the last checkpoint written before the stop at step 18
    assert int(kept.optimizer_state["global_step"].item()) == 8 - 3  # only the finite steps updated the weights


# ---- determinism -------------------------------------------------------------------------------------
def _sample_twice(tmp_path: Path, *args) -> list:
    """The same `sample` command in two fresh processes: the PNG bytes and the images of each."""
    results = []
    for index in range(2):
        out, npz = tmp_path / f"grid{index}.png", tmp_path / f"images{index}.npz"
        result = run_cli("sample", *args, "--n", "3", "--seed", "5", "--out", out, "--npz", npz)
        assert result.returncode == 0, result.stderr[-2000:]
        with np.load(npz, allow_pickle=False) as saved:
            results.append((out.read_bytes(), saved["images"].tobytes()))
    return results


@pytest.mark.parametrize("source", [
    pytest.param("onnx", id="onnxruntime"),
    pytest.param("mslite", id="mslite", marks=LITE),
    pytest.param("checkpoint", id="mindspore-reference"),
])
def test_same_seed_and_backend_give_identical_bytes_across_processes(source, tiny_exports, tiny_checkpoint, tmp_path):
    args = ["--checkpoint", tiny_checkpoint] if source == "checkpoint" else \
        ["--artifact", tiny_exports[source], "--scheduler", "ddim", "--steps", "4"]
    first, second = _sample_twice(tmp_path, *args)
    assert first == second


# ---- safe loading ------------------------------------------------------------------------------------
TOOLKIT = [REPO / name for name in ("runtime", "train", "export", "bench")] + [REPO / "cli.py"]
PICKLERS = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _python_files(*roots: Path) -> list:
    return sorted(path for root in roots for path in ([root] if root.is_file() else root.rglob("*.py")))


def test_the_runtime_never_imports_a_pickler():
    for path in _python_files(REPO / "runtime"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {name.split(".")[0] for name in names} & PICKLERS, f"{path}:{node.lineno}"


def test_every_np_load_refuses_pickles():
    for path in _python_files(*TOOLKIT):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("np.load", "numpy.load"):
                flags = {kw.arg: ast.unparse(kw.value) for kw in node.keywords}
                assert flags.get("allow_pickle") == "False", f"{path}:{node.lineno}: {ast.unparse(node)}"


@pytest.mark.parametrize("field, value, fragment", [
    ("artifact", "../../etc/passwd", "must be a file name beside the manifest"),
    ("artifact_sha256", "not-a-digest", "64 lowercase hex digits"),
    ("opset", True, "field 'opset' must be an integer or null"),
    ("inputs", [{"name": "x", "dtype": "object", "shape": ["batch", 1, 8, 8]}] * 2, "dtype must be one of"),
    ("outputs", [{"name": "eps", "dtype": "float32", "shape": ["batch", 0, 8, 8]}], "shape axes must be positive"),
    ("betas", [0.5] * 9 + [1.5], "betas must be numbers in (0, 1)"),
])
def test_manifest_schema_errors_name_the_field(tiny_exports, field, value, fragment):
    data = json.loads(manifest_path_for(tiny_exports["onnx"]).read_text())
    with pytest.raises(ToolkitError, match=re.escape(fragment)):
        Manifest.from_dict({**data, field: value}, source="m.json")


def _with_external_data(artifact: Path, folder: Path, location: str) -> Path:
    """A copy of `artifact` whose weights live in an external file, the reference to it rewritten to `location`."""
    import onnx

    model = onnx.load(str(artifact))
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "unet.onnx"
    # size_threshold: onnx's default, so shape tensors stay inline (onnxruntime reads them to infer shapes)
    onnx.save_model(model, str(copy), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    model = onnx.load(str(copy), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(copy))
    manifest = json.loads(manifest_path_for(artifact).read_text())
    write_text_atomic(manifest_path_for(copy), json.dumps({**manifest, "artifact_sha256": sha256_file(copy)}))
    return copy


def test_onnx_external_data_inside_the_artifacts_directory_loads(tiny_exports, tmp_path):
    inside = _with_external_data(tiny_exports["onnx"], tmp_path / "deploy", "weights.bin")
    single_file = Sampler.load(tiny_exports["onnx"]).sample(2, "ddim", 3, seed=1)
    assert np.array_equal(Sampler.load(inside).sample(2, "ddim", 3, seed=1), single_file)


@pytest.mark.parametrize("escape", ["relative", "absolute", "symlink"])
def test_onnx_external_data_outside_the_artifacts_directory_is_refused(tiny_exports, tmp_path, escape):
    deploy = tmp_path / "deploy"
    _with_external_data(tiny_exports["onnx"], deploy, "weights.bin")
    (deploy / "weights.bin").rename(tmp_path / "weights.bin")  # the data now sits one level up
    (deploy / "link.bin").symlink_to(tmp_path / "weights.bin")
    location = {"relative": "../weights.bin", "absolute": str(tmp_path / "weights.bin"), "symlink": "link.bin"}[escape]
    artifact = _with_external_data(tiny_exports["onnx"], deploy, location)
    with pytest.raises(ToolkitError, match="lies outside the model's directory"):
        Sampler.load(artifact)


def test_the_external_data_walker_finds_what_onnx_finds(tmp_path):
    """Tensors in initializers, in a Constant node's attribute and inside an If node's subgraph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from ms_ddpm.runtime.onnx_external import external_locations

    def tensor(name):
        return numpy_helper.from_array(np.full(4, len(name), np.float32), name)

    branch = helper.make_graph([helper.make_node("Add", ["x", "w2"], ["y2"])], "branch", [],
                               [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [4])], [tensor("w2")])
    nodes = [helper.make_node("Constant", [], ["c"], value=tensor("c")),
             helper.make_node("Add", ["x", "w1"], ["s"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x",)]
                              + [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [tensor("w1")])
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0, convert_attribute=True)
    model = onnx.load(str(path), load_external_data=False)
    expected = sorted(entry.value for t in _get_all_tensors(model) if uses_external_data(t)
                      for entry in t.external_data if entry.key == "location")
    assert len(expected) == 4 and sorted(external_locations(path.read_bytes())) == expected


# ---- concurrency -------------------------------------------------------------------------------------
def test_two_sample_processes_on_one_artifact_do_not_interfere(tiny_exports, tmp_path):
    command = [sys.executable, str(REPO / "cli.py"), "sample", "--artifact", str(tiny_exports["onnx"]), "--n", "3",
               "--scheduler", "dpmpp", "--steps", "4"]
    processes = [subprocess.Popen([*command, "--seed", str(seed), "--out", str(tmp_path / f"{seed}.png"),
                                   "--npz", str(tmp_path / f"{seed}.npz")], cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    sampler = Sampler.load(tiny_exports["onnx"])
    for seed in (1, 2):
        with np.load(tmp_path / f"{seed}.npz", allow_pickle=False) as saved:
            assert np.array_equal(saved["images"], sampler.sample(3, "dpmpp", 4, seed=seed))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["1.npz", "1.png", "2.npz", "2.png"]


def test_one_sampler_serves_several_threads_with_one_scheduler_object(tiny_exports):
    sampler = Sampler.load(tiny_exports["onnx"])
    shared = sampler.scheduler("dpmpp", 4)  # multistep: it carries state from step to step within a run
    expected = {seed: sampler.sample(2, "dpmpp", 4, seed=seed) for seed in range(4)}
    results = {}

    def work(seed: int) -> None:
        for _ in range(3):
            results.setdefault(seed, []).append(sampler.sample(2, shared, seed=seed))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, runs in results.items():
        assert all(np.array_equal(run, expected[seed]) for run in runs), seed


def test_a_backend_that_is_not_thread_safe_is_called_by_one_thread_at_a_time():
    inside, overlaps = [], []

    def runner(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        inside.append(1)
        overlaps.append(len(inside) > 1)
        time.sleep(0.01)
        inside.pop()
        return x

    backend = Backend("fake", runner)  # thread_safe=False, as for the mindspore and mslite backends
    x, t = np.zeros((2, 1, 2, 2), np.float32), np.zeros(2, np.int32)
    threads = [threading.Thread(target=lambda: [backend(x, t) for _ in range(5)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 20 and not any(overlaps)


# ---- the crash-safe writer's housekeeping --------------------------------------------------------------
def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".grid.png.{dead.stdout.strip()}.abcd1234.tmp.png"
    live = tmp_path / f".grid.png.{os.getpid()}.abcd1234.tmp.png"  # a writer still running
    other = tmp_path / f".grid.png.json.{dead.stdout.strip()}.abcd1234.tmp"  # another file's temporary
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    with atomic_path(tmp_path / "grid.png", suffix=".png") as tmp:
        tmp.write_bytes(b"complete")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["grid.png", live.name, other.name])


def test_the_training_log_is_cut_back_to_the_resumed_checkpoint(tmp_path):
    from ms_ddpm.train.trainer import open_log

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    with open_log(log, 6) as handle:
        handle.write(json.dumps({"step": 7, "loss": 0.5}) + "\n")
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6, 7]
    open_log(log, 0).close()  # a new run in the same directory starts a new curve
    assert log.read_text() == ""
