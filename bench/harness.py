"""The bench's harness: worker processes, the rotation that times them in turn, statistics, the machine.

Each measurement runs in a worker (bench/worker.py; MindSpore and Lite never share a process). The
workers stay alive and make one timed call each in turn, with a short pause between them (one's
spinning threads go idle before the next): a busy machine slows all alike, and the ratios hold.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from importlib import metadata, util
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..runtime.cpu import cpu_flags, cpu_model
from ..runtime.errors import ToolkitError
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


def onnx_session(model: Any, threads: Optional[int] = None):
    """An onnxruntime CPU session with the runtime's options, on a model that is not a U-Net artifact
    (the peak MatMul, the quality classifier)."""
    import onnxruntime as ort

    from ..runtime.ort_session import session_options

    return ort.InferenceSession(model, session_options(ort, threads), providers=["CPUExecutionProvider"])


class Worker:
    """The parent's handle on one `bench.worker` child: send(op, ...), then receive() its answer."""

    def __init__(self, label: str, spec: Dict[str, Any], env: Dict[str, str], log_dir: Path):
        self.label, self.open_s = label, None
        self.log_path = log_dir / f"worker-{label.replace(' ', '_').replace('/', '_')}.log"
        with self.log_path.open("w") as stderr:
            self.proc = subprocess.Popen(module_command("bench.worker", json.dumps(spec)), stdin=subprocess.PIPE,
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
            worker.open_s = worker.receive()["open_s"]
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


def summarize(times: Sequence[float], flops: Optional[float] = None) -> Dict[str, Any]:
    """n, median and min seconds (and GFLOP/s when the FLOPs per call are known)."""
    out: Dict[str, Any] = {"n": len(times), "median_s": statistics.median(times), "min_s": min(times),
                           "times_s": [round(t, 6) for t in times]}
    if flops:
        out.update(gflops_median=flops / out["median_s"] / 1e9, gflops_best=flops / out["min_s"] / 1e9)
    return out


def machine() -> Dict[str, Any]:
    """The CPU (model name and a summary of its vector flags), core count, platform, library versions."""
    flags = cpu_flags() or set()
    return {"cpu": cpu_model() or platform.processor() or platform.machine(),
            "isa": [flag for flag in ISA_FLAGS if flag in flags], "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {p: metadata.version(p) for p in ("onnxruntime", "openvino", "mindspore", "numpy", "onnx")
                         if util.find_spec(p)}}


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages; None where the platform has none."""
    with contextlib.suppress(OSError):
        return [round(v, 2) for v in os.getloadavg()]
    return None
