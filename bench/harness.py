"""The bench's harness: workers (one spawned process per engine, called over a pipe), the rotation that times
them in turn with a short pause between them (one's spinning threads go idle before the next: a busy machine
slows all alike, and the ratios hold), statistics, the machine."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import signal
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata, util
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..export.gate import gate_cases
from ..runtime.cpu import cpu_flags, cpu_model
from ..runtime.errors import ToolkitError, first_line
from ..runtime.ort_session import session_options
from ..runtime.pipeline import Sampler

PAUSE_S = 0.03
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "hypervisor")
SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: each child loads only its own libraries
Log = Callable[[str], None]


class WorkerFailed(ToolkitError):
    """A worker that could not open, answered with an error, or exited."""


def in_child(function: Callable[..., Any], **kwargs: Any) -> Any:
    """function(**kwargs) in a fresh process (MindSpore stays out of this one); a failure is one ToolkitError."""
    with ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
        try:
            return pool.submit(function, **kwargs).result()
        except ToolkitError:
            raise
        except Exception as exc:  # the function's own error, or BrokenProcessPool when the child died
            raise ToolkitError(f"{function.__name__} failed in a child process: {type(exc).__name__}: "
                               f"{first_line(exc)}") from exc


def onnx_session(model: Any, threads: Optional[int] = None) -> Any:
    """An onnxruntime CPU session with the runtime's options on a model that is not a U-Net artifact."""
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(ort, threads), providers=["CPUExecutionProvider"])


class Worker:
    """The parent's handle on one worker: send(op, ...), then receive() its answer."""

    def __init__(self, label: str, spec: Dict[str, Any]):
        self.label = label
        self.pipe, child_end = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=serve, args=(child_end, spec), name=f"bench {label}")
        self.proc.start()
        child_end.close()

    def send(self, op: str, **kwargs: Any) -> None:
        try:
            self.pipe.send((op, kwargs))
        except OSError as exc:
            raise WorkerFailed(f"{self.label}: the worker is gone (exit code {self.proc.exitcode})") from exc

    def receive(self) -> Dict[str, Any]:
        try:
            ok, answer = self.pipe.recv()
        except (EOFError, OSError) as exc:
            self.proc.join(30)
            raise WorkerFailed(f"{self.label}: the worker exited with code {self.proc.exitcode}") from exc
        if not ok:
            raise WorkerFailed(f"{self.label}: {answer}")
        return answer

    def ask(self, op: str, **kwargs: Any) -> Dict[str, Any]:
        self.send(op, **kwargs)
        return self.receive()

    def close(self) -> None:
        self.pipe.close()  # the worker's loop ends at end of input
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def start_workers(specs: Dict[str, Dict[str, Any]], errors: Dict[str, str]) -> Dict[str, Worker]:
    """Start every worker side by side; those that fail to open are reported in `errors` and left out."""
    ready = {}
    for label, worker in [(label, Worker(label, spec)) for label, spec in specs.items()]:
        try:
            worker.receive()
            ready[label] = worker
        except WorkerFailed as exc:
            worker.close()
            errors[label] = str(exc)
    return ready


def rotate(workers: Dict[str, Worker], op: str, args: Dict[str, Any], repeats: int, budget_s: float,
           errors: Dict[str, str]) -> Dict[str, List[float]]:
    """An untimed warm-up call in every worker at once, then timed calls one worker at a time, in turn.

    A worker's first timed call sets how many it gets (at most `repeats`, about `budget_s` of calls,
    at least 2). A worker that fails is reported in `errors` and leaves the rotation."""
    times: Dict[str, List[float]] = {label: [] for label in workers}
    owed = dict.fromkeys(workers, 1)  # timed calls still owed; the first one sets the quota

    def each(call: Callable[[Worker], Any]) -> Iterator[Tuple[str, Any]]:
        for label in [label for label in workers if owed[label]]:
            try:
                yield label, call(workers[label])
            except WorkerFailed as exc:
                errors[f"{label} ({op} {args})"] = str(exc)
                owed[label] = 0

    list(each(lambda worker: worker.send(op, **args, calls=0)))  # the warm-ups run side by side
    list(each(Worker.receive))
    while any(owed.values()):
        for label, took in each(lambda worker: worker.ask(op, **args, calls=1)["times"]):
            quota = owed[label] if times[label] else max(2, min(repeats, int(budget_s / max(took[0], 1e-9))))
            times[label] += took
            owed[label] = quota - 1
            time.sleep(PAUSE_S)
    return {label: t for label, t in times.items() if t}


def summarize(times: Sequence[float], flops: float) -> Dict[str, Any]:
    """n, median and min seconds, and GFLOP/s at `flops` per call."""
    median, best = statistics.median(times), min(times)
    return {"n": len(times), "median_s": median, "min_s": best, "times_s": [round(t, 6) for t in times],
            "gflops_median": flops / median / 1e9, "gflops_best": flops / best / 1e9}


def machine() -> Dict[str, Any]:
    """The CPU (model name and a summary of its vector flags), core count, platform, library versions."""
    flags = cpu_flags() or set()
    return {"cpu": cpu_model() or platform.processor() or platform.machine(),
            "isa": [flag for flag in ISA_FLAGS if flag in flags], "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {p: metadata.version(p) for p in ("onnxruntime", "openvino", "mindspore", "numpy", "onnx")
                         if util.find_spec(p)}}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    return "".join("| " + " | ".join(map(str, row)) + " |\n" for row in [header, ["---"] * len(header), *rows])


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages; None where the platform has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


# ---- the worker's side -----------------------------------------------------------------------------
def timed(call: Callable[..., Any], *args: Any) -> Tuple[Any, float]:
    """call(*args) and its seconds."""
    began = time.perf_counter()
    return call(*args), time.perf_counter() - began


def matmul_call(size: int, threads: Optional[int]) -> Callable[[], Any]:
    """One size x size float32 MatMul on onnxruntime, whose MLAS picks its kernels from the CPU: the fp32 peak."""
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", spec[:2], spec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = onnx_session(model.SerializeToString(), threads)
    a, b = np.random.default_rng(0).standard_normal((2, size, size), dtype=np.float32)
    return lambda: session.run(None, {"a": a, "b": b})


class TrainSteps:
    """The toolkit's jit `TrainStep` as `train` runs it (a BatchSampler batch, the step, its loss read back), on
    random images, one per batch size; `fused=False` spells GroupNorm as the exporters do (the step before
    the fused norm). Weights, optimizer and data all come from seed 0, so both spellings see the same numbers."""

    def __init__(self, config: Dict[str, Any], fused: bool):
        from ..train import prepare_mindspore

        prepare_mindspore()
        self.config, self.fused, self.steps = config, fused, {}

    def at(self, batch: int) -> Callable[[], float]:
        """The step at `batch` (built and compiled on its first call)."""
        if batch not in self.steps:
            self.steps[batch] = self._build(batch)
        return self.steps[batch]

    def _build(self, batch: int) -> Callable[[], float]:
        import itertools

        import mindspore as ms
        from mindspore import Tensor

        from ..runtime.config import Config
        from ..train.model import build_unet, use_exportable_norms
        from ..train.trainer import BatchSampler, TrainStep

        config = Config.from_dict({**self.config, "train": {"batch_size": batch, "steps": 100_000}})
        ms.set_seed(0)
        net = build_unet(config.model)
        step = TrainStep(net if self.fused else use_exportable_norms(net), config)
        m = config.model
        images = np.random.default_rng(0).uniform(-1, 1, (4 * batch, m.channels, m.image_size, m.image_size))
        batches, counter = BatchSampler(images.astype(np.float32), config).batch, itertools.count()
        return lambda: float(step.step(*map(Tensor, batches(next(counter))))[0].asnumpy())


class Engine:
    """A worker's engine: a runtime backend (`kind`) in a Sampler on a U-Net artifact, kind "matmul", or kind
    "train" (`TrainSteps` on the model `config`)."""

    def __init__(self, kind: str, artifact: str = "", size: int = 0, threads: Optional[int] = None,
                 config: Optional[Dict[str, Any]] = None, fused: bool = True):
        if kind == "mindspore":
            from ..train import prepare_mindspore

            prepare_mindspore()  # as the toolkit runs MindSpore: oneDNN capped at AVX2 on AVX-512 CPUs
        self.sampler, self.train = None, TrainSteps(config or {}, fused) if kind == "train" else None
        if kind == "matmul":
            self.call = matmul_call(size, threads)
        elif kind != "train":
            self.sampler = Sampler.load(artifact, backend=kind, threads=threads)
            self.call = self.sampler.backend

    def _call(self, batch: int) -> Tuple[Callable[..., Any], tuple]:
        """The call at `batch` and its arguments: the export gate's random (x, t) for a U-Net, none otherwise."""
        if self.train is not None:
            return self.train.at(batch), ()
        if self.sampler is None:
            return self.call, ()
        case = gate_cases(self.sampler.manifest.run_config, batch, (batch,))[0]
        return self.call, (case.x, case.t.astype(self.sampler.index_dtype))

    def time(self, calls: int, batch: int = 1) -> Dict[str, Any]:
        """Seconds of `calls` calls; calls=0: one untimed call (the warm-up)."""
        call, args = self._call(batch)
        return {"times": [timed(call, *args)[1] for _ in range(max(calls, 1))][:calls]}

    def sample(self, n: int, scheduler: str, steps: int) -> Dict[str, Any]:
        """Seconds of `Sampler.sample(n, scheduler, steps)`, and the part spent in its U-Net calls."""
        spent = []

        def timed_unet(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            eps, seconds = timed(self.call, x, t)
            spent.append(seconds)
            return eps

        seconds = timed(Sampler(timed_unet, self.sampler.manifest).sample, n, scheduler, steps)[1]
        return {"seconds": seconds, "unet_s": sum(spent), "unet_calls": len(spent)}


def serve(pipe: Any, spec: Dict[str, Any]) -> None:
    """A worker's loop: open the engine, then answer each (op, kwargs) with (ok, answer) until the pipe closes.
    Ctrl-C is the parent's to handle: it closes the pipes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = Engine(**spec)
        pipe.send((True, {"ready": True}))
    except Exception as exc:  # an engine that cannot open: one line for the parent's table
        pipe.send((False, f"cannot open {spec['kind']}: {type(exc).__name__}: {first_line(exc)}"))
        engine = None
    with contextlib.suppress(EOFError, OSError):  # the pipe closed
        while engine is not None:
            op, kwargs = pipe.recv()
            try:
                pipe.send((True, getattr(engine, op)(**kwargs)))
            except Exception as exc:  # the parent reports it and carries on without this worker's row
                pipe.send((False, f"{type(exc).__name__}: {first_line(exc)}"))
    os._exit(0)  # skip library exit-time destructors (Lite's has crashed at exit)
