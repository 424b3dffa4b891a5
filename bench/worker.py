"""A benchmark worker: one child process that holds one backend (or MindSpore training state) and
times what the orchestrator (bench/run.py) asks, one JSON command per stdin line.

    python -m bench.worker '{"artifact": "unet.onnx", "backend": "onnxruntime", "threads": 2}'

Replies are single lines starting with REPLY_PREFIX (libraries print to stdout too). Timing happens
here, around the call only, so the pipe round trip is not counted. Keeping several workers alive
and asking each for a few calls in turn lets the orchestrator alternate backends call by call: a
busy machine then slows all of them alike, and their ratios hold.

Which libraries load depends on the spec and the commands: a `mslite` worker never imports
MindSpore, an onnxruntime worker never imports either; a worker asked to `train` or `reference`
imports MindSpore (ONEDNN_MAX_CPU_ISA comes from the parent's environment for the child).

Commands ({"op": ..., ...}) and their replies:
    unet     batch, calls                  -> times (s per U-Net call, after one warm-up call)
    matmul   size, calls                   -> times (s per size x size float32 matmul, numpy)
    sample   n, scheduler, steps, seed     -> seconds (one `Sampler.sample` run)
    train    batch, calls                  -> times (s per MindSpore train step; the first, compiling, one excluded)
    reference n, steps                     -> times (s per step of the MindSpore reference DDPM loop)
    quit
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import numpy as np

REPLY_PREFIX = "@@bench "


class _Stop(Exception):
    pass


class Worker:
    def __init__(self, spec: Dict[str, Any]):
        self.spec = spec
        self.sampler = None
        self.eps: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
        self.ready: Dict[str, Any] = {}
        self._inputs: Dict[int, tuple] = {}
        self._trainer = None
        if spec.get("artifact"):
            self._open()

    # ---- the U-Net -----------------------------------------------------------------------------
    def _open(self) -> None:
        started = time.perf_counter()
        options = self.spec.get("ort_options")
        if options is not None:  # an onnxruntime variant (bench/explore.py), outside the runtime's defaults
            from .explore import open_session

            self.eps, self.image_shape, self.timesteps = open_session(self.spec["artifact"], options)
        else:
            from ..runtime.pipeline import Sampler

            self.sampler = Sampler.load(self.spec["artifact"], backend=self.spec.get("backend"),
                                        threads=self.spec.get("threads"))
            self.eps = self.sampler.backend
            self.image_shape = self.sampler.image_shape
            self.timesteps = self.sampler.tables.timesteps
        self.ready["open_s"] = time.perf_counter() - started

    def _batch(self, batch: int) -> tuple:
        if batch not in self._inputs:
            rng = np.random.default_rng(batch)
            x = rng.standard_normal((batch, *self.image_shape), dtype=np.float32)
            t = rng.integers(0, self.timesteps, batch).astype(np.int32)
            self._inputs[batch] = (x, t)
        return self._inputs[batch]

    def unet(self, batch: int, calls: int, warmup: bool = True) -> Dict[str, Any]:
        x, t = self._batch(batch)
        if warmup:
            self.eps(x, t)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            self.eps(x, t)
            times.append(time.perf_counter() - start)
        return {"times": times}

    def sample(self, n: int, scheduler: str, steps: Optional[int], seed: int = 0) -> Dict[str, Any]:
        start = time.perf_counter()
        self.sampler.sample(n, scheduler, steps, seed=seed)
        return {"seconds": time.perf_counter() - start}

    # ---- the machine -----------------------------------------------------------------------------
    @staticmethod
    def matmul(size: int, calls: int) -> Dict[str, Any]:
        """The machine's fp32 matmul rate, two ways: numpy (OpenBLAS) and onnxruntime's MatMul (MLAS).

        OpenBLAS picks its kernels by CPU model; under a hypervisor it may not recognise the CPU and
        fall back to a generic core (`threadpoolctl` shows which): the orchestrator sets
        OPENBLAS_CORETYPE for this worker, and the faster of the two engines is the peak."""
        from .explore import matmul_session

        rng = np.random.default_rng(0)
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        out = np.empty_like(a)
        session = matmul_session(size)
        engines = {"numpy": lambda: np.matmul(a, b, out=out), "onnxruntime": lambda: session.run(None, {"a": a, "b": b})}
        result: Dict[str, Any] = {"flops": 2 * size ** 3}
        for name, run in engines.items():
            run()
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            result[name] = times
        return result

    # ---- MindSpore: training step and the reference sampler ----------------------------------------
    def _mindspore_model(self):
        from ..train.checkpoint import load_model  # imports MindSpore (train/ sets the oneDNN dispatch first)

        return load_model(self.spec["checkpoint"])

    def train(self, batch: int, calls: int, warmup: bool = True) -> Dict[str, Any]:
        import dataclasses

        from mindspore import Tensor

        from ..train import CPU_DISPATCH_NOTE
        from ..train.trainer import BatchSampler, TrainStep

        if self._trainer is None or self._trainer[0] != batch:
            net, loaded = self._mindspore_model()
            config = dataclasses.replace(loaded.config, train=dataclasses.replace(loaded.config.train, batch_size=batch,
                                                                                   steps=10_000))
            model = config.model
            rng = np.random.default_rng(0)
            images = rng.uniform(-1, 1, (4 * batch, model.channels, model.image_size, model.image_size)).astype(np.float32)
            self._trainer = (batch, TrainStep(net, config), BatchSampler(images, config))
            started = time.perf_counter()
            step = self._trainer[1].step(*map(Tensor, self._trainer[2].batch(0)))
            step[0].asnumpy()
            self.ready["train_compile_s"] = time.perf_counter() - started
        _, trainer, sampler = self._trainer
        times = []
        for index in range(calls):
            tensors = [Tensor(a) for a in sampler.batch(index + 1)]
            start = time.perf_counter()
            loss, _ = trainer.step(*tensors)
            loss.asnumpy()
            times.append(time.perf_counter() - start)
        return {"times": times, "dispatch": CPU_DISPATCH_NOTE, "compile_s": self.ready["train_compile_s"]}

    def reference(self, n: int, steps: int) -> Dict[str, Any]:
        """Time the first `steps` steps of `reference_sample` (the `sample --checkpoint` path) on n images."""
        import mindspore as ms

        from ..runtime.schedules import ScheduleTables
        from ..train.diffusion import draw_sampling_noise, reference_sample

        net, loaded = self._mindspore_model()
        ms.set_context(mode=ms.GRAPH_MODE)
        model = loaded.config.model
        tables = ScheduleTables.from_name(loaded.config.diffusion.schedule, loaded.config.diffusion.timesteps)
        x_T, step_noise = draw_sampling_noise(np.random.default_rng(0), (n, model.channels, model.image_size,
                                                                         model.image_size), tables.timesteps)
        stamps = [time.perf_counter()]

        def on_step(t: int, x: np.ndarray) -> None:
            stamps.append(time.perf_counter())
            if len(stamps) > steps:
                raise _Stop

        try:
            reference_sample(net, tables, x_T, step_noise, on_step=on_step)
        except _Stop:
            pass
        times = list(np.diff(stamps))
        return {"times": times, "timesteps": tables.timesteps}


def reply(payload: Dict[str, Any]) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def main(argv: List[str]) -> None:
    try:
        worker = Worker(json.loads(argv[0]))
    except Exception as exc:  # the orchestrator reports it and carries on without this backend
        reply({"error": _one_line(exc)})
        os._exit(1)
    reply({"ready": worker.ready})
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        try:
            reply(getattr(worker, op)(**command))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            reply({"error": _one_line(exc)})
    sys.stdout.flush()
    os._exit(0)  # skip library exit-time destructors (Lite's has crashed at exit)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


if __name__ == "__main__":
    main(sys.argv[1:])
