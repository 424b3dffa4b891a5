"""`cli.py bench`: U-Net latency per backend, end-to-end sampling, MindSpore training step and cold
start, in one run, written as Markdown + JSON.

This process only orchestrates (numpy, onnx for the FLOP count). Every measurement runs in a child
process (bench/worker.py): MindSpore and MindSpore Lite can never share a process, and
ONEDNN_MAX_CPU_ISA must be set before MindSpore loads, so "MindSpore with / without the oneDNN
dispatch setting" are two processes. The workers stay alive and are asked for one call each in
turn, with a short pause between them (so that one's spinning threads do not steal from the next):
a busy machine slows all of them alike, and the ratios measured in one run are the headline.
The fp32 matmul peak is timed in the same rotation.
"""
from __future__ import annotations

import json
import os
import platform
import queue
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..runtime.errors import ToolkitError
from ..runtime.processes import module_command

from .worker import REPLY_PREFIX

Log = Callable[[str], None]
E2E_RUNS = (("ddpm", 200), ("ddim", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10))
SCHEDULER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++"}
OPENBLAS_CORETYPE = "SkylakeX"  # OpenBLAS 0.3.23 takes this CPU under KVM for a "Prescott" (SSE3) core
MATMUL_SIZE = 2048
PAUSE_S = 0.03  # between two workers' calls: lets the last one's spinning threads go to sleep


@dataclass
class BenchSettings:
    quick: bool = False
    checkpoint: Optional[Path] = None  # None: an untrained model (tutorial-size, or tiny with --quick)
    work: Path = Path("runs/bench")
    batches: Tuple[int, ...] = (1, 16, 64)
    repeats: Optional[int] = None  # timed calls per backend and batch (default 10, quick 3)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    backends: Tuple[str, ...] = ("onnxruntime", "mslite", "mindspore")
    e2e_images: int = 64
    explore: Optional[bool] = None  # onnxruntime variants (default: full runs only)
    budget_s: Optional[float] = None  # time allowed per backend and batch; slow backends get fewer calls

    def __post_init__(self) -> None:
        self.repeats = self.repeats or (3 if self.quick else 10)
        self.budget_s = self.budget_s or (2.0 if self.quick else 20.0)
        self.explore = (not self.quick) if self.explore is None else self.explore


# ---- child processes --------------------------------------------------------------------------------
class WorkerFailed(ToolkitError):
    pass


class WorkerProcess:
    """One bench.worker child: ask(op, ...) -> its JSON reply."""

    def __init__(self, label: str, spec: Dict[str, Any], env: Dict[str, str], log_dir: Path, timeout: float = 1800,
                 wait: bool = True):
        self.label, self.timeout = label, timeout
        self.stderr_path = log_dir / f"worker-{label.replace(' ', '_').replace('/', '_')}.log"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(module_command("bench.worker", json.dumps(spec)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     env={**os.environ, "GLOG_v": "3", **env})
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready: Dict[str, Any] = {}
        if wait:
            self.wait_ready()

    def wait_ready(self) -> "WorkerProcess":
        self.ready = self._read()["ready"]
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(REPLY_PREFIX):
                self._lines.put(line[len(REPLY_PREFIX):])
        self._lines.put(None)

    def _read(self) -> Dict[str, Any]:
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            self.close()
            raise WorkerFailed(f"{self.label}: no reply within {self.timeout:.0f} s") from None
        if line is None:
            raise WorkerFailed(f"{self.label}: the worker exited ({self._tail()})")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerFailed(f"{self.label}: {reply['error']}")
        return reply

    def _tail(self) -> str:
        self._stderr.flush()
        lines = [l for l in self.stderr_path.read_text(errors="replace").splitlines() if l.strip()]
        return lines[-1][:300] if lines else f"exit code {self.proc.poll()}"

    def send(self, op: str, **kwargs: Any) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed(f"{self.label}: the worker is gone ({self._tail()})") from None

    def receive(self) -> Dict[str, Any]:
        return self._read()

    def ask(self, op: str, **kwargs: Any) -> Dict[str, Any]:
        self.send(op, **kwargs)
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def _child_json(args: List[str], env: Optional[Dict[str, str]] = None, timeout: float = 1800) -> Dict[str, Any]:
    result = subprocess.run(module_command(*args), capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "GLOG_v": "3", **(env or {})})
    replies = [l[len(REPLY_PREFIX):] for l in result.stdout.splitlines() if l.startswith(REPLY_PREFIX)]
    if result.returncode != 0 or not replies:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolkitError(f"`python {' '.join(args[:2])}` failed (exit {result.returncode}): {tail[:300]}")
    return json.loads(replies[-1])


# ---- statistics ---------------------------------------------------------------------------------------
def summarize(times: Sequence[float], flops: Optional[float] = None) -> Dict[str, Any]:
    out: Dict[str, Any] = {"n": len(times), "median_s": statistics.median(times), "min_s": min(times),
                           "times_s": [round(t, 6) for t in times]}
    if flops:
        out["gflops_median"] = flops / out["median_s"] / 1e9
        out["gflops_best"] = flops / out["min_s"] / 1e9
    return out


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name"))
        flags = set(next(l.split(":", 1)[1].split() for l in cpuinfo.splitlines() if l.startswith("flags")))
        info["cpu"] = model
        info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16",
                                   "amx_int8", "hypervisor") if f in flags]
        mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2 ** 20, 1)
    except (OSError, StopIteration):
        pass
    from importlib import metadata

    for package in ("onnxruntime", "mindspore", "numpy", "onnx"):
        try:
            info.setdefault("versions", {})[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return info


def load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ---- the benchmark -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, settings: BenchSettings, log: Log):
        self.s = settings
        self._t0 = time.perf_counter()
        self.log = lambda line: log(f"[{time.perf_counter() - self._t0:6.1f} s] {line}")
        self.workers: Dict[str, WorkerProcess] = {}
        self.result: Dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in asdict(settings).items()},
                                       "errors": {}}

    def run(self) -> Dict[str, Any]:
        started = time.perf_counter()
        self.result["machine"] = machine()
        self.result["load_average_start"] = load_average()
        self.s.work.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare()
            self._start_workers()
            self._unet_latency()
            self._end_to_end()
            self._training()
            self._cold_start()
            if self.s.explore:
                from .variants import explore_onnxruntime

                for label in [label for label in self.workers if label != "peak"]:
                    self.workers.pop(label).close()
                self.result["explore"] = explore_onnxruntime(self)
        finally:
            self._close_workers()
        finalize_peak(self.result)
        self.result["load_average_end"] = load_average()
        self.result["duration_s"] = round(time.perf_counter() - started, 1)
        return self.result

    # -- models and workers
    def _prepare(self) -> None:
        self.log("preparing models (checkpoint -> ONNX, MindIR, MindSpore Lite) ...")
        formats = [f for b, f in (("onnxruntime", "onnx"), ("mindspore", "mindir"), ("mslite", "mslite"))
                   if b in self.s.backends or f == "onnx"]
        args = ["bench.prepare", str(self.s.work / "models"), "--formats", ",".join(formats)]
        if self.s.checkpoint is not None:
            args += ["--checkpoint", str(self.s.checkpoint)]
        elif self.s.quick:
            args.append("--tiny")
        prepared = _child_json(args)
        self.result["models"] = prepared
        for fmt, error in prepared["errors"].items():
            self.result["errors"][f"export {fmt}"] = error
            self.log(f"  export {fmt} failed: {error}")
        if "onnx" not in prepared["artifacts"]:
            raise ToolkitError(f"could not export the model to ONNX: {prepared['errors'].get('onnx')}")
        self.onnx = Path(prepared["artifacts"]["onnx"])
        from .flops import count_flops

        self.flops_per_image = count_flops(self.onnx, 1)
        manifest = json.loads(self.onnx.with_name(self.onnx.name + ".json").read_text())
        self.config = manifest["config"]
        self.timesteps = len(manifest["betas"])
        self.result["model"] = {"config": self.config["model"], "timesteps": self.timesteps,
                                "gflop_per_image": self.flops_per_image / 1e9}
        self.log(f"  model: {self.config['model']}, {self.flops_per_image / 1e9:.3f} GFLOP/image")

    def _backend_specs(self) -> List[Tuple[str, Dict[str, Any], Dict[str, str]]]:
        art = self.result["models"]["artifacts"]
        ckpt = self.result["models"]["checkpoint"]
        specs = [("peak", {}, {"OPENBLAS_CORETYPE": OPENBLAS_CORETYPE})]
        if "onnxruntime" in self.s.backends:
            specs.append(("onnxruntime", {"artifact": art["onnx"], "threads": self.s.threads}, {}))
        if "mslite" in self.s.backends and "mslite" in art:
            specs.append(("mslite", {"artifact": art["mslite"], "backend": "mslite", "threads": self.s.threads}, {}))
        if "mindspore" in self.s.backends and "mindir" in art:
            for isa, label in (("AVX2", "mindspore AVX2"), ("ALL", "mindspore ALL")):
                specs.append((label, {"artifact": art["mindir"], "backend": "mindspore", "threads": self.s.threads,
                                      "checkpoint": ckpt}, {"ONEDNN_MAX_CPU_ISA": isa}))
        return specs

    def _start_workers(self) -> None:
        specs = self._backend_specs()
        self.log(f"starting workers: {', '.join(label for label, _, _ in specs)} ...")
        starting = {label: WorkerProcess(label, spec, env, self.s.work, wait=False) for label, spec, env in specs}
        for label, worker in starting.items():  # side by side; cold start is measured on its own below
            try:
                self.workers[label] = worker.wait_ready()
            except WorkerFailed as exc:
                worker.close()
                self.result["errors"][f"worker {label}"] = str(exc)
                self.log(f"  {exc}")
        if "peak" not in self.workers:
            raise ToolkitError(f"the matmul-peak worker failed: {self.result['errors'].get('worker peak')}")

    def _close_workers(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()

    # -- the rotation
    def rotate(self, workers: Dict[str, WorkerProcess], op: str, args: Dict[str, Any], repeats: int,
               budget_s: float, with_peak: bool = True) -> Dict[str, List[float]]:
        """Each worker: an untimed warm-up call (all workers at once), then timed calls one at a time, in
        turn; a worker whose call takes long gets fewer (at least 2)."""
        times: Dict[str, List[float]] = {label: [] for label in workers}
        quota: Dict[str, int] = {}
        live = dict(workers)
        for label, worker in list(live.items()):  # warm-up (graph compile, first-shape costs): all at once
            try:
                worker.send(op, **args, calls=0)
            except WorkerFailed as exc:
                self._drop(label, exc, times)
                live.pop(label)
        for label, worker in list(live.items()):
            try:
                worker.receive()
            except WorkerFailed as exc:
                self._drop(label, exc, times)
                live.pop(label)
        for label, worker in live.items():  # one timed call each sets how many calls it can afford
            try:
                first = worker.ask(op, **args, calls=1, warmup=False)["times"]
            except WorkerFailed as exc:
                self._drop(label, exc, times)
                continue
            times[label].extend(first)
            quota[label] = max(2, min(repeats, int(budget_s / max(first[0], 1e-9)))) - 1
            time.sleep(PAUSE_S)
        for _ in range(max(quota.values(), default=0) + (1 if with_peak else 0)):
            for label, worker in workers.items():
                if quota.get(label, 0) <= 0:
                    continue
                try:
                    times[label].extend(worker.ask(op, **args, calls=1, warmup=False)["times"])
                except WorkerFailed as exc:
                    self._drop(label, exc, times)
                    quota[label] = 0
                    continue
                quota[label] -= 1
                time.sleep(PAUSE_S)
            if with_peak:
                reply = self.workers["peak"].ask("matmul", size=MATMUL_SIZE, calls=1)
                self._peak_flops = reply["flops"]
                self._peak_times.setdefault("numpy", []).extend(reply["numpy"])
                self._peak_times.setdefault("onnxruntime", []).extend(reply["onnxruntime"])
                time.sleep(PAUSE_S)
        return {label: t for label, t in times.items() if t}

    def _drop(self, label: str, exc: Exception, times: Dict[str, List[float]]) -> None:
        self.result["errors"][f"{label}"] = str(exc)
        self.log(f"  {label} failed: {exc}")
        times.pop(label, None)

    def peak(self) -> Dict[str, Any]:
        engines = {engine: summarize(t, self._peak_flops) for engine, t in self._peak_times.items()}
        best = max(engines, key=lambda e: engines[e]["gflops_best"])
        return {"size": MATMUL_SIZE, "engines": engines, "engine": best,
                "gflops_best": engines[best]["gflops_best"], "gflops_median": engines[best]["gflops_median"],
                "openblas_coretype": OPENBLAS_CORETYPE}

    def _unet_latency(self) -> None:
        self._peak_times: Dict[str, List[float]] = {}
        unet_workers = {k: w for k, w in self.workers.items() if k != "peak"}
        rows = []
        for batch in self.s.batches:
            self.log(f"U-Net calls at batch {batch} ({', '.join(unet_workers)}; interleaved) ...")
            measured = self.rotate(unet_workers, "unet", {"batch": batch}, self.s.repeats, self.s.budget_s)
            for label, times in measured.items():
                rows.append({"backend": label, "batch": batch, **summarize(times, self.flops_per_image * batch)})
        self.result["peak"] = peak = self.peak()
        for row in rows:
            row["peak_fraction_best"] = row["gflops_best"] / peak["gflops_best"]
            row["peak_fraction_median"] = row["gflops_median"] / peak["gflops_median"]
            ort = next((r for r in rows if r["backend"] == "onnxruntime" and r["batch"] == row["batch"]), None)
            row["vs_onnxruntime"] = row["median_s"] / ort["median_s"] if ort else None
        self.result["unet"] = rows
        self.result["open_s"] = {label: w.ready.get("open_s") for label, w in self.workers.items() if label != "peak"}
        self.log(f"  matmul peak: {peak['gflops_best']:.0f} GFLOP/s ({peak['engine']})")

    def _end_to_end(self) -> None:
        runs = []
        n = self.s.e2e_images
        ort = self.workers.get("onnxruntime")
        if ort is not None:
            for name, steps in E2E_RUNS:
                steps = min(steps, self.timesteps)
                self.log(f"end to end: {n} images, {SCHEDULER_NAMES[name]}-{steps} (onnxruntime) ...")
                seconds = ort.ask("sample", n=n, scheduler=name, steps=steps, seed=0)["seconds"]
                runs.append({"path": "runtime (onnxruntime)", "scheduler": name, "steps": steps, "seconds": seconds,
                             "extrapolated": False})
        reference = self.workers.get("mindspore AVX2")
        if reference is not None:
            probe = 3 if self.s.quick else 6
            self.log(f"end to end: MindSpore reference DDPM ({probe} of {self.timesteps} steps, extrapolated) ...")
            try:
                steps = reference.ask("reference", n=n, steps=probe)["times"][1:]  # the first step compiles
                runs.append({"path": "MindSpore reference (graph mode, AVX2)", "scheduler": "ddpm",
                             "steps": self.timesteps, "seconds": statistics.median(steps) * self.timesteps,
                             "extrapolated": True, "measured_steps": len(steps),
                             "step_s": summarize(steps)})
            except WorkerFailed as exc:
                self.result["errors"]["reference"] = str(exc)
        base = next((r["seconds"] for r in runs if r["scheduler"] == "ddpm" and not r["extrapolated"]), None)
        for run in runs:
            run["vs_runtime_ddpm"] = run["seconds"] / base if base else None
        self.result["end_to_end"] = {"images": n, "runs": runs}

    def _training(self) -> None:
        workers = {label: w for label, w in self.workers.items() if label.startswith("mindspore")}
        if not workers:
            return
        batch = 16
        self.log(f"MindSpore train step at batch {batch} ({', '.join(workers)}; interleaved) ...")
        measured = self.rotate(workers, "train", {"batch": batch}, max(3, self.s.repeats // 2),
                               self.s.budget_s * 2, with_peak=False)
        rows = [{"worker": label, "isa": label.split()[-1], "batch": batch,
                 "flops_per_step_approx": 3 * self.flops_per_image * batch, **summarize(times)}
                for label, times in measured.items()]
        fast = next((r for r in rows if r["isa"] == "AVX2"), None)
        for row in rows:
            row["slowdown_vs_avx2"] = row["median_s"] / fast["median_s"] if fast else None
        self.result["training"] = rows

    def _cold_start(self) -> None:
        art = self.result["models"]["artifacts"]
        rows = []
        for backend, fmt in (("onnxruntime", "onnx"), ("mslite", "mslite")):
            if backend not in self.s.backends or fmt not in art:
                continue
            self.log(f"cold start: {backend} (fresh processes) ...")
            samples = []
            for _ in range(3):
                began = time.perf_counter()
                try:
                    child = _child_json(["bench.coldstart", art[fmt], backend, str(self.s.threads)])
                except ToolkitError as exc:
                    self.result["errors"][f"cold start {backend}"] = str(exc)
                    break
                child["process_s"] = time.perf_counter() - began
                samples.append(child)
            if samples:
                keys = ("import_s", "open_s", "first_call_s", "process_s")
                rows.append({"backend": backend, "runs": len(samples),
                             **{k: statistics.median(s[k] for s in samples) for k in keys}})
        self.result["cold_start"] = rows


def finalize_peak(result: Dict[str, Any]) -> None:
    """The machine's peak is the best matmul rate seen anywhere in the run (any rotation): a busy spell
    during one rotation must not lower the bar. Best-call fractions are taken against it; the median
    fractions stay within their own rotation (both sides saw the same load)."""
    peaks = [p["gflops_best"] for p in (result.get("peak"), result.get("explore", {}).get("peak")) if p]
    if not peaks:
        return
    best = max(peaks)
    result["peak"]["gflops_best_run"] = best
    for row in result.get("unet", []) + result.get("explore", {}).get("variants", []):
        row["peak_fraction_best"] = row["gflops_best"] / best


def run_bench(settings: BenchSettings, out: Path, log: Log = print, command: str = "") -> Dict[str, Any]:
    """Run everything; write OUT.json and OUT.md (OUT without suffix). Returns the result."""
    from .report import render_markdown

    bench = Bench(settings, log)
    result = bench.run()
    result["command"] = command
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(render_markdown(result))
    log(f"wrote {md_path} and {json_path} ({result['duration_s']:.0f} s)")
    return result
