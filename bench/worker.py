"""A bench worker: one child process holding one engine, timing what the parent asks, one JSON
command per stdin line (bench/harness.py starts it and reads its answers).

    python -m ms_ddpm.bench.worker '{"kind": "onnxruntime", "artifact": "/abs/unet.onnx", "threads": 2}'

Kinds: a runtime backend (`runtime.backends.BACKENDS`: onnxruntime, mslite, mindspore) on an artifact;
`openvino` (a peer engine, not a runtime backend) on the ONNX artifact; `matmul`, one size x size
float32 MatMul on onnxruntime, whose MLAS picks its kernels from the CPU: the fp32 peak.

Commands ({"op": ..., ...}): time (calls, batch) -> seconds per call (calls=0: one untimed warm-up
call); output (batch, path) -> eps saved as .npy; sample (n, scheduler, steps) -> seconds, and the
part spent in U-Net calls.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..runtime.backends import BACKENDS, Backend
from ..runtime.errors import ToolkitError, first_line, run_main
from ..runtime.pipeline import Sampler, load_artifact

from .harness import onnx_session, reply


def open_openvino(artifact: str, threads: Optional[int]) -> Sampler:
    """The ONNX U-Net on OpenVINO's CPU plug-in in fp32."""
    import openvino as ov

    path, manifest = load_artifact(artifact)
    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    model = ov.Core().compile_model(str(path), "CPU", config)
    request, names = model.create_infer_request(), [spec.name for spec in manifest.inputs]
    return Sampler(Backend("openvino", lambda x, t: request.infer(dict(zip(names, (x, t))))[model.output(0)].copy()),
                   manifest)


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
    """One engine: a Sampler on a U-Net artifact (`call` is its backend), or the peak MatMul."""

    def __init__(self, spec: Dict[str, Any]):
        kind, threads = spec["kind"], spec.get("threads")
        if kind == "matmul":
            self.sampler, self.call = None, matmul_call(spec["size"], threads)
            return
        self.sampler = Sampler.load(spec["artifact"], backend=kind, threads=threads) if kind in BACKENDS \
            else open_openvino(spec["artifact"], threads)
        self.call = self.sampler.backend

    def _inputs(self, batch: int) -> tuple:
        if self.sampler is None:
            return ()
        rng, manifest = np.random.default_rng(batch), self.sampler.manifest
        x = rng.standard_normal((batch, *self.sampler.image_shape), dtype=np.float32)
        return x, rng.integers(0, manifest.timesteps, batch).astype(manifest.inputs[1].dtype)

    def time(self, calls: int, batch: int = 1) -> Dict[str, Any]:
        args, times = self._inputs(batch), []
        for _ in range(max(calls, 1)):
            began = time.perf_counter()
            self.call(*args)
            times.append(time.perf_counter() - began)
        return {"times": times[:calls]}

    def output(self, batch: int, path: str) -> Dict[str, Any]:
        np.save(path, self.call(*self._inputs(batch)))
        return {"path": path}

    def sample(self, n: int, scheduler: str, steps: int) -> Dict[str, Any]:
        backend, spent = self.sampler.backend, []

        def timed_backend(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            began = time.perf_counter()
            eps = backend(x, t)
            spent.append(time.perf_counter() - began)
            return eps

        self.sampler.backend, began = timed_backend, time.perf_counter()
        try:
            self.sampler.sample(n, scheduler, steps, seed=0)
        finally:
            self.sampler.backend = backend
        return {"seconds": time.perf_counter() - began, "unet_s": sum(spent), "unet_calls": len(spent)}


def main() -> None:
    spec, began = json.loads(sys.argv[1]), time.perf_counter()
    try:
        worker = Worker(spec)
    except ToolkitError:
        raise
    except Exception as exc:  # an engine that cannot open: one line for the parent's table
        raise ToolkitError(f"cannot open {spec['kind']}: {type(exc).__name__}: {first_line(exc)}") from exc
    reply({"open_s": time.perf_counter() - began})
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
