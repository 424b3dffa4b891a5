"""`ms-ddpm bench`: U-Net latency per engine against the fp32 MatMul peak, and end-to-end sampling against
its U-Net calls, in one run; Markdown + JSON.

This process only orchestrates (numpy, onnx for the FLOP count); every measurement runs in a worker
(bench/harness.py). The rows are data: each runtime backend on each artifact of its format (two ONNX
graphs where the exporter optimises), peer engines on the ONNX, and MindSpore with and without the
oneDNN AVX2 cap.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from ..export.gate import compare
from ..runtime.backends import BACKENDS
from ..runtime.cpu import cpu_flags
from ..runtime.errors import ToolkitError
from ..runtime.files import write_text_atomic
from ..runtime.manifest import Manifest, manifest_path_for
from ..runtime.processes import run_module

from .flops import count_flops
from .harness import Log, Worker, WorkerFailed, load_average, machine, replies, rotate, start_workers, summarize
from .report import render_markdown

PEERS = {"openvino": "onnx"}  # engines beside the runtime's backends, and the format they read
ENGINES = (*BACKENDS, *PEERS)
PEAK = "fp32 matmul peak"
MATMUL_SIZE = 2048
E2E_RUNS = (("ddpm", 200), ("ddim", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10))
AGREEMENT_BATCH = 4
Rows = Dict[str, Tuple[Dict[str, Any], Dict[str, str]]]  # label -> (worker spec, environment)


@dataclass
class BenchSettings:
    work: Path  # absolute: models, worker logs
    quick: bool = False
    checkpoint: Optional[Path] = None  # None: an untrained model (tutorial-size, or tiny with --quick)
    batches: Tuple[int, ...] = (1, 16, 64)
    repeats: Optional[int] = None  # timed calls per engine and batch (default 10, quick 3)
    threads: Optional[int] = None  # None: every engine's own default
    engines: Tuple[str, ...] = ENGINES
    e2e_images: int = 64

    def __post_init__(self) -> None:
        self.repeats = self.repeats or (3 if self.quick else 10)
        self.budget_s = 2.0 if self.quick else 20.0  # per engine and batch: a slow engine gets fewer calls


def onednn_settings(flags: Set[str]) -> Dict[str, Dict[str, str]]:
    """MindSpore's two rows: with the oneDNN AVX2 cap (where the CPU has AVX2) and without a cap."""
    capped = {"AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}} if "avx2" in flags else {}
    return {**capped, "ALL": {"ONEDNN_MAX_CPU_ISA": "ALL"}}


def engine_rows(s: BenchSettings, artifacts: List[Dict[str, Any]], flags: Set[str], missing: Dict[str, str]) -> Rows:
    """Every requested engine on every artifact of its format; what cannot run goes to `missing`."""
    rows: Rows = {}
    for engine in s.engines:
        if engine in PEERS and importlib.util.find_spec(engine) is None:
            missing[engine] = f"not installed (pip install {engine})"
            continue
        fmt = BACKENDS[engine].format if engine in BACKENDS else PEERS[engine]
        if not any(a["format"] == fmt for a in artifacts):
            missing[engine] = f"no {fmt} export (see Not measured)"
        if engine == "mindspore" and "avx2" not in flags:
            missing["mindspore AVX2"] = "the CPU has no AVX2"
        for artifact in [a for a in artifacts if a["format"] == fmt]:
            label = engine + (f" ({artifact['graph']} graph)" if artifact["graph"] else "")
            spec = {"kind": engine, "artifact": artifact["path"], "threads": s.threads}
            settings = onednn_settings(flags) if engine == "mindspore" else {"": {}}
            rows.update({f"{label} {isa}".strip(): (spec, env) for isa, env in settings.items()})
    return rows


class Bench:
    """One run: make the models, start the workers, time them, close them; `run()` returns the result."""

    def __init__(self, settings: BenchSettings, log: Log):
        self.s, began = settings, time.perf_counter()
        self.log = lambda line: log(f"[{time.perf_counter() - began:6.1f} s] {line}")
        self.workers: Dict[str, Worker] = {}
        self.errors: Dict[str, str] = {}
        self.missing: Dict[str, str] = {}  # rows that were not measured, and why (short)
        self.result: Dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v
                                                    for k, v in asdict(settings).items()}}

    def run(self) -> Dict[str, Any]:
        began = time.perf_counter()
        self.result.update(machine=machine(), load_average_start=load_average(),
                           started=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
        self._prepare()
        try:
            self._start_workers()
            self._unet_latency()
            self._agreement()
            self._end_to_end()
        finally:
            for worker in self.workers.values():
                worker.close()
        self.result.update(errors=self.errors, missing=self.missing, load_average_end=load_average(),
                           duration_s=round(time.perf_counter() - began, 1))
        return self.result

    def _prepare(self) -> None:
        self.log("preparing models (checkpoint -> exports) ...")
        formats = sorted({BACKENDS[e].format for e in self.s.engines if e in BACKENDS} | {"onnx"})
        request = {"kind": "models", "work": str(self.s.work), "formats": formats, "tiny": self.s.quick,
                   "checkpoint": self.s.checkpoint and str(self.s.checkpoint)}
        models = next(replies(run_module("bench.worker", json.dumps(request), what="preparing the models").stdout
                              .splitlines()))
        self.errors.update(models["errors"])
        onnx = next((a["path"] for a in models["artifacts"] if a["format"] == "onnx"), None)
        if onnx is None:
            raise ToolkitError(f"could not export the model to ONNX: {models['errors'].get('export onnx')}")
        self.flops_per_image, self.manifest = count_flops(onnx, 1), Manifest.load(manifest_path_for(onnx))
        self.result.update(models=models, model={"config": self.manifest.config["model"], "timesteps":
                           self.manifest.timesteps, "gflop_per_image": self.flops_per_image / 1e9})

    def _start_workers(self) -> None:
        rows = engine_rows(self.s, self.result["models"]["artifacts"], cpu_flags() or set(), self.missing)
        rows[PEAK] = ({"kind": "matmul", "size": MATMUL_SIZE, "threads": self.s.threads}, {})
        self.log(f"starting workers: {', '.join(rows)} ...")
        self.workers = start_workers(rows, self.s.work, self.errors)
        self.missing.update({label: "failed (see Not measured)" for label in rows if label not in self.workers})
        self.result["open_s"] = {label: worker.open_s for label, worker in self.workers.items() if label != PEAK}

    def _alive(self, peak: bool = False) -> Dict[str, Worker]:
        """The workers still running: the U-Net engines, and the peak MatMul if `peak`."""
        return {label: worker for label, worker in self.workers.items()
                if (peak or label != PEAK) and worker.proc.poll() is None}

    def _unet_latency(self) -> None:
        rows, peak_times = [], []
        for batch in self.s.batches:
            workers = self._alive(peak=True)
            self.log(f"U-Net calls at batch {batch} ({', '.join(workers)}; in turn) ...")
            measured = rotate(workers, "time", {"batch": batch}, self.s.repeats, self.s.budget_s, self.errors)
            peak_times += measured.pop(PEAK, [])
            rows += [{"backend": label, "batch": batch, **summarize(times, self.flops_per_image * batch)}
                     for label, times in measured.items()]
        peak = summarize(peak_times, 2 * MATMUL_SIZE ** 3) if peak_times else {}
        self.result["peak"] = {"size": MATMUL_SIZE, "engine": "onnxruntime MatMul (MLAS)", **peak}
        for row in rows:
            for stat in ("best", "median"):
                row[f"peak_fraction_{stat}"] = row[f"gflops_{stat}"] / peak[f"gflops_{stat}"] if peak else None
            row["vs_first"] = row["median_s"] / next(r for r in rows if r["batch"] == row["batch"])["median_s"]
        self.result["unet"] = rows

    def _agreement(self) -> None:
        """Every engine's output on the same inputs against the first engine's (the export gate's measures)."""
        outputs = {}
        for label, worker in self._alive().items():
            try:
                saved = worker.ask("output", batch=AGREEMENT_BATCH, path=str(self.s.work / f"eps-{len(outputs)}.npy"))
                outputs[label] = np.load(saved["path"], allow_pickle=False)
            except WorkerFailed as exc:
                self.errors[f"{label} (output)"] = str(exc)
        reference = next(iter(outputs.values()), None)
        self.result["agreement"] = {label: compare(reference, eps) for label, eps in outputs.items()}

    def _end_to_end(self) -> None:
        """`Sampler.sample` per scheduler on the first engine, against the time spent in its U-Net calls."""
        runs, n = [], self.s.e2e_images
        engine, worker = next(iter(self._alive().items()), (None, None))
        for name, steps in E2E_RUNS if worker else ():
            steps = min(steps, self.manifest.timesteps)
            self.log(f"end to end: {n} images, {name}-{steps} ({engine}) ...")
            try:
                timed = worker.ask("sample", n=n, scheduler=name, steps=steps)
                runs.append({"scheduler": name, "steps": steps, **timed})
            except WorkerFailed as exc:
                self.errors[f"end to end {name}-{steps}"] = str(exc)
        ddpm = next((r["seconds"] for r in runs if r["scheduler"] == "ddpm"), None)
        for run in runs:
            run["vs_ddpm"] = run["seconds"] / ddpm if ddpm else None
        self.result["end_to_end"] = {"images": n, "engine": engine, "runs": runs}


def run_bench(settings: BenchSettings, out: Path, log: Log, command: str) -> Dict[str, Any]:
    """Run everything; write OUT.json and OUT.md (`out` without suffix, absolute). Returns the result."""
    result = {**Bench(settings, log).run(), "command": command}
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), render_markdown(result))
    log(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')} ({result['duration_s']:.0f} s)")
    return result
