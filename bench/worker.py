"""The bench's child processes; the parent (bench/latency.py, through bench/harness.py) reads their answers.

    python -m ms_ddpm.bench.worker '{"kind": "models", "work": "/abs", "formats": ["onnx"], "checkpoint": null, "tiny": true}'
    python -m ms_ddpm.bench.worker '{"kind": "onnxruntime", "artifact": "/abs/unet.onnx", "threads": 2}'

`models` exports a checkpoint to the formats asked for and exits (it imports MindSpore). Every other
kind holds one engine and answers one JSON command per stdin line, {"op": method of `Worker`, ...}:
a runtime backend (`runtime.backends.BACKENDS`) on an artifact; `openvino` (a peer engine) on the
ONNX; `matmul`, one size x size float32 MatMul on onnxruntime, whose MLAS picks its kernels from the
CPU: the fp32 peak.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..export.gate import gate_cases
from ..runtime.backends import BACKENDS, Backend
from ..runtime.config import Config, ModelConfig
from ..runtime.errors import ToolkitError, first_line, run_main
from ..runtime.pipeline import Sampler, load_artifact

from .harness import onnx_session, reply


def make_models(work: str, formats: List[str], checkpoint: Optional[str], tiny: bool) -> Dict[str, Any]:
    """`checkpoint` (None: an untrained tutorial-size U-Net, 8x8 if `tiny`) exported to `formats` in `work`, the
    ONNX twice (optimised and plain graph), without the numeric gate: {checkpoint, artifacts, errors}."""
    from ..train import prepare_mindspore

    prepare_mindspore()
    import mindspore as ms

    from ..export.formats import format_module
    from ..export.pipeline import ExportRequest, export_checkpoint
    from ..train.checkpoint import resolve_checkpoint_path, save_checkpoint
    from ..train.model import build_unet

    if checkpoint is None:
        ms.set_seed(0)
        config = Config(model=ModelConfig(image_size=8, channels=1, dim=8, dim_mults=(1, 2))) if tiny else Config()
        checkpoint = save_checkpoint(Path(work) / "untrained.ckpt", config, step=0, net=build_unet(config.model))
    result: Dict[str, Any] = {"checkpoint": str(resolve_checkpoint_path(checkpoint)), "artifacts": [], "errors": {}}
    for fmt in formats:
        for graph, optimize in ({"optimized": True, "plain": False} if fmt == "onnx" else {None: True}).items():
            out = Path(work) / f"unet{'-' + graph if graph else ''}{format_module(fmt).SUFFIX}"
            try:
                export_checkpoint(Path(result["checkpoint"]), ExportRequest(fmt, out, gate=None, optimize=optimize),
                                  log=lambda line: print(line, file=sys.stderr))
                result["artifacts"].append({"format": fmt, "graph": graph, "path": str(out)})
            except Exception as exc:  # a format that cannot be made here (e.g. no Lite bridge) is reported
                result["errors"][f"export {fmt}"] = f"{type(exc).__name__}: {first_line(exc)}"
    return result


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


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Tuple[Any, float]:
    """call(*args, **kwargs) and its seconds."""
    began = time.perf_counter()
    return call(*args, **kwargs), time.perf_counter() - began


class Worker:
    """One engine: a Sampler on a U-Net artifact (`call` is its backend), or the peak MatMul."""

    def __init__(self, kind: str, artifact: str = "", size: int = 0, threads: Optional[int] = None):
        if kind == "matmul":
            self.sampler, self.call = None, matmul_call(size, threads)
            return
        self.sampler = Sampler.load(artifact, backend=kind, threads=threads) if kind in BACKENDS \
            else open_openvino(artifact, threads)
        self.call = self.sampler.backend

    def _inputs(self, batch: int) -> tuple:
        """The export gate's random (x, t) at `batch`; none for the MatMul."""
        if self.sampler is None:
            return ()
        case = gate_cases(self.sampler.manifest.run_config, batch, (batch,))[0]
        return case.x, case.t.astype(self.sampler.index_dtype)

    def time(self, calls: int, batch: int = 1) -> Dict[str, Any]:
        """Seconds of `calls` calls; calls=0: one untimed call (the warm-up)."""
        args = self._inputs(batch)
        return {"times": [timed(self.call, *args)[1] for _ in range(max(calls, 1))][:calls]}

    def output(self, batch: int, path: str) -> Dict[str, Any]:
        """eps on the inputs of `batch`, saved as .npy at `path`."""
        np.save(path, self.call(*self._inputs(batch)))
        return {"path": path}

    def sample(self, n: int, scheduler: str, steps: int) -> Dict[str, Any]:
        """Seconds of `Sampler.sample(n, scheduler, steps)`, and the part spent in its U-Net calls."""
        backend, spent = self.sampler.backend, []

        def timed_backend(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            eps, seconds = timed(backend, x, t)
            spent.append(seconds)
            return eps

        self.sampler.backend = timed_backend
        try:
            seconds = timed(self.sampler.sample, n, scheduler, steps)[1]
        finally:
            self.sampler.backend = backend
        return {"seconds": seconds, "unet_s": sum(spent), "unet_calls": len(spent)}


def main() -> None:
    spec = json.loads(sys.argv[1])
    kind = spec.pop("kind")
    if kind == "models":
        reply(make_models(**spec))
        return
    try:
        worker, open_s = timed(Worker, kind, **spec)
    except ToolkitError:
        raise
    except Exception as exc:  # an engine that cannot open: one line for the parent's table
        raise ToolkitError(f"cannot open {kind}: {type(exc).__name__}: {first_line(exc)}") from exc
    reply({"open_s": open_s})
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
