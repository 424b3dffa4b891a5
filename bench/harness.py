"""The bench's harness: workers (`python -m ms_ddpm.bench.harness SPEC`, one engine each, answering one JSON
command per stdin line), the rotation that times them in turn with a short pause between them (one's spinning
threads go idle before the next: a busy machine slows all alike, and the ratios hold), statistics, the machine."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata, util
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..export.gate import gate_cases
from ..runtime.cpu import cpu_flags, cpu_model
from ..runtime.errors import ToolkitError, first_line, run_main
from ..runtime.pipeline import Sampler
from ..runtime.processes import error_line, module_command, quiet_env

REPLY_PREFIX = "@@bench "  # a child's answers are single lines with this prefix: libraries print to stdout too
PAUSE_S = 0.03
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "hypervisor")
Log = Callable[[str], None]


class WorkerFailed(ToolkitError):
    """A worker that could not open, answered with an error, or exited."""


def reply(payload: Dict[str, Any]) -> None:
    """A child's answer to the parent: one prefixed JSON line."""
    print(REPLY_PREFIX + json.dumps(payload), flush=True)


def replies(lines: Iterable[str]) -> Iterator[Dict[str, Any]]:
    """The answers among a child's output lines."""
    return (json.loads(line[len(REPLY_PREFIX):]) for line in lines if line.startswith(REPLY_PREFIX))


def onnx_session(model: Any, threads: Optional[int] = None) -> Any:
    """An onnxruntime CPU session with the runtime's options on a model that is not a U-Net artifact."""
    import onnxruntime as ort

    from ..runtime.ort_session import session_options

    return ort.InferenceSession(model, session_options(ort, threads), providers=["CPUExecutionProvider"])


class Worker:
    """The parent's handle on one worker: send(op, ...), then receive() its answer."""

    def __init__(self, label: str, spec: Dict[str, Any], env: Dict[str, str], log_dir: Path):
        self.label = label
        self.log_path = log_dir / f"worker-{label.replace(' ', '_').replace('/', '_')}.log"
        with self.log_path.open("w") as stderr:
            self.proc = subprocess.Popen(module_command("bench.harness", json.dumps(spec)), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=stderr, text=True, env={**quiet_env(), **env})

    def send(self, op: str, **kwargs: Any) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise WorkerFailed(f"{self.label}: the worker is gone (see {self.log_path})") from exc

    def receive(self) -> Dict[str, Any]:
        answer = next(replies(self.proc.stdout), None)
        if answer is None:
            code, stderr = self.proc.wait(), self.log_path.read_text(errors="replace")
            detail = error_line(stderr) or next(reversed(stderr.strip().splitlines()), "no output")
            raise WorkerFailed(f"{self.label}: the worker exited with code {code}: {detail[:300]}")
        if "error" in answer:
            raise WorkerFailed(f"{self.label}: {answer['error']}")
        return answer

    def ask(self, op: str, **kwargs: Any) -> Dict[str, Any]:
        self.send(op, **kwargs)
        return self.receive()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # the worker's loop ends at end of input
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_workers(specs: Dict[str, Tuple[Dict[str, Any], Dict[str, str]]], log_dir: Path,
                  errors: Dict[str, str]) -> Dict[str, Worker]:
    """Start every (spec, env) side by side; those that fail to open are reported in `errors` and left out."""
    ready = {}
    for label, worker in [(label, Worker(label, spec, env, log_dir)) for label, (spec, env) in specs.items()]:
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
                errors[f"{label} ({op} {json.dumps(args)})"] = str(exc)
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
    with contextlib.suppress(OSError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


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


class Engine:
    """A worker's engine: a runtime backend (`kind`) in a Sampler on a U-Net artifact, or kind "matmul"."""

    def __init__(self, kind: str, artifact: str = "", size: int = 0, threads: Optional[int] = None):
        if kind == "matmul":
            self.sampler, self.call = None, matmul_call(size, threads)
        else:
            self.sampler = Sampler.load(artifact, backend=kind, threads=threads)
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
        spent = []

        def timed_unet(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            eps, seconds = timed(self.call, x, t)
            spent.append(seconds)
            return eps

        seconds = timed(Sampler(timed_unet, self.sampler.manifest).sample, n, scheduler, steps)[1]
        return {"seconds": seconds, "unet_s": sum(spent), "unet_calls": len(spent)}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        engine = Engine(**spec)
    except ToolkitError:
        raise
    except Exception as exc:  # an engine that cannot open: one line for the parent's table
        raise ToolkitError(f"cannot open {spec['kind']}: {type(exc).__name__}: {first_line(exc)}") from exc
    reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            reply(getattr(engine, command.pop("op"))(**command))
        except Exception as exc:  # the parent reports it and carries on without this worker's row
            reply({"error": f"{type(exc).__name__}: {first_line(exc)}"})
    sys.stdout.flush()
    os._exit(0)  # skip library exit-time destructors (Lite's has crashed at exit)


if __name__ == "__main__":
    run_main(main)
