"""A bench worker: one child process holding one engine, timing what the parent asks, one JSON
command per stdin line (bench/harness.py starts it and reads its replies).

    python -m ms_ddpm.bench.worker '{"kind": "onnxruntime", "artifact": "/abs/unet.onnx", "threads": 2}'

Kinds: a runtime backend (`runtime.backends.BACKENDS`: onnxruntime, mslite, mindspore) on an
artifact; `openvino` (a peer engine, not a runtime backend) on the ONNX artifact; `matmul`, one
size x size float32 MatMul on onnxruntime, whose MLAS picks its kernels from the CPU: the fp32 peak.
A `mindspore` worker with a `checkpoint` also runs training steps and the reference sampler. With
`"cold_start": true` it opens, makes one batch-1 call, replies with the times from its start, and exits.

Commands ({"op": ..., ...}): time (calls, batch) -> times of the kind's call; output (batch, path)
-> eps saved as .npy; sample (n, scheduler, steps) -> seconds, and the part spent in U-Net calls;
train (batch, calls) -> seconds per train step; reference (n, steps) -> seconds per reference step.
"""
from __future__ import annotations

import time

_began = time.perf_counter()  # for the cold start: the imports below are part of it

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402

from ..runtime.backends import BACKENDS, Backend  # noqa: E402
from ..runtime.errors import ToolkitError, first_line, run_main  # noqa: E402
from ..runtime.manifest import Manifest  # noqa: E402
from ..runtime.pipeline import Sampler, load_artifact  # noqa: E402

from .harness import onnx_session, reply  # noqa: E402


def open_openvino(artifact: Path, manifest: Manifest, threads: Optional[int]) -> Backend:
    """The ONNX U-Net on OpenVINO's CPU plug-in in fp32."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    model = ov.Core().compile_model(str(artifact), "CPU", config)
    request, (x_name, t_name) = model.create_infer_request(), (spec.name for spec in manifest.inputs)
    return Backend("openvino", lambda x, t: request.infer({x_name: x, t_name: t})[model.output(0)].copy())


def matmul_call(size: int, threads: Optional[int]) -> Callable[[], Any]:
    """One size x size float32 MatMul on onnxruntime (a model built in memory)."""
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", spec[:2], spec[2:])
    session = onnx_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString(),
                           threads)
    a, b = np.random.default_rng(0).standard_normal((2, size, size), dtype=np.float32)
    return lambda: session.run(None, {"a": a, "b": b})


class Worker:
    def __init__(self, spec: Dict[str, Any]):
        self.spec, self.ready = spec, {}
        self._trainer: Optional[tuple] = None
        started = time.perf_counter()
        if spec["kind"] == "matmul":
            self.call = matmul_call(spec["size"], spec.get("threads"))
        else:
            self.sampler = self._open(spec["kind"], spec["artifact"], spec.get("threads"))
            self.call = self.sampler.backend
        self.ready["open_s"] = time.perf_counter() - started

    @staticmethod
    def _open(kind: str, artifact: str, threads: Optional[int]) -> Sampler:
        if kind in BACKENDS:
            return Sampler.load(artifact, backend=kind, threads=threads)
        path, manifest = load_artifact(artifact)
        return Sampler(open_openvino(path, manifest, threads), manifest)

    def _inputs(self, batch: int) -> tuple:
        rng = np.random.default_rng(batch)
        manifest = self.sampler.manifest
        x = rng.standard_normal((batch, *self.sampler.image_shape), dtype=np.float32)
        return x, rng.integers(0, manifest.timesteps, batch).astype(manifest.inputs[1].dtype)

    def time(self, calls: int, batch: Optional[int] = None, warmup: bool = True) -> Dict[str, Any]:
        args = () if self.spec["kind"] == "matmul" else self._inputs(batch)
        if warmup:
            self.call(*args)
        return {"times": _timed(calls, lambda: self.call(*args))}

    def output(self, batch: int, path: str) -> Dict[str, Any]:
        np.save(path, self.call(*self._inputs(batch)))
        return {"path": path}

    def sample(self, n: int, scheduler: str, steps: int, seed: int = 0) -> Dict[str, Any]:
        backend, spent = self.sampler.backend, []

        def timed_backend(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            began = time.perf_counter()
            eps = backend(x, t)
            spent.append(time.perf_counter() - began)
            return eps

        self.sampler.backend = timed_backend
        began = time.perf_counter()
        try:
            self.sampler.sample(n, scheduler, steps, seed=seed)
        finally:
            self.sampler.backend = backend
        return {"seconds": time.perf_counter() - began, "unet_s": sum(spent), "unet_calls": len(spent)}

    # ---- MindSpore: training step and the reference sampler --------------------------------------
    def train(self, batch: int, calls: int, warmup: bool = True) -> Dict[str, Any]:
        from mindspore import Tensor

        if self._trainer is None or self._trainer[0] != batch:
            self._trainer = (batch, *_train_step(self.spec["checkpoint"], batch))
        _, step, batches = self._trainer
        if warmup:
            step(*map(Tensor, batches(0)))[0].asnumpy()  # compiles
        inputs = iter([list(map(Tensor, batches(index + 1))) for index in range(calls)])
        return {"times": _timed(calls, lambda: step(*next(inputs))[0].asnumpy())}

    def reference(self, n: int, steps: int) -> Dict[str, Any]:
        """Seconds per step of `reference_sample` (the `sample --checkpoint` path) on n images, first steps only."""
        from ..runtime.schedules import ScheduleTables
        from ..train.checkpoint import load_model
        from ..train.diffusion import reference_sample

        net, loaded = load_model(self.spec["checkpoint"])
        model, diffusion = loaded.config.model, loaded.config.diffusion
        tables = ScheduleTables.from_name(diffusion.schedule, diffusion.timesteps)
        rng = np.random.default_rng(0)  # the values do not matter for timing
        shape = (n, model.channels, model.image_size, model.image_size)
        stamps = [time.perf_counter()]

        def on_step(t: int, x: np.ndarray) -> None:
            stamps.append(time.perf_counter())
            if len(stamps) > steps:
                raise StopIteration

        try:
            reference_sample(net, tables, rng.standard_normal(shape, dtype=np.float32),
                             rng.standard_normal((tables.timesteps - 1, *shape), dtype=np.float32), on_step=on_step)
        except StopIteration:
            pass
        return {"times": np.diff(stamps).tolist()}


def _train_step(checkpoint: str, batch: int) -> tuple:
    """The toolkit's jit TrainStep at `batch` on random images, and a function step -> its batch."""
    import dataclasses

    from ..train.checkpoint import load_model
    from ..train.trainer import BatchSampler, TrainStep

    net, loaded = load_model(checkpoint)
    config = dataclasses.replace(loaded.config, train=dataclasses.replace(loaded.config.train, batch_size=batch,
                                                                           steps=10_000))
    shape = (4 * batch, config.model.channels, config.model.image_size, config.model.image_size)
    images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    return TrainStep(net, config).step, BatchSampler(images, config).batch


def _timed(calls: int, call: Callable[[], Any]) -> List[float]:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    spec, imported = json.loads(sys.argv[1]), time.perf_counter()
    try:
        worker = Worker(spec)
    except ToolkitError:
        raise
    except Exception as exc:  # an engine that cannot open: one line for the parent's table
        raise ToolkitError(f"cannot open {spec['kind']}: {type(exc).__name__}: {first_line(exc)}") from exc
    if spec.get("cold_start"):  # a fresh process: import, open, one batch-1 call, and exit
        first_call = worker.time(calls=1, batch=1, warmup=False)["times"][0]
        reply({"import_s": imported - _began, "open_s": worker.ready["open_s"], "first_call_s": first_call})
    else:
        reply({"ready": worker.ready})
        for line in sys.stdin:
            command = json.loads(line)
            try:
                reply(getattr(worker, command.pop("op"))(**command))
            except Exception as exc:  # the parent reports it and carries on without this worker's row
                reply({"error": f"{type(exc).__name__}: {first_line(exc)}"})
    sys.stdout.flush()
    os._exit(0)  # skip library exit-time destructors (Lite's has crashed at exit)


if __name__ == "__main__":
    run_main(main)
