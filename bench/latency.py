"""`ms-ddpm bench`: U-Net latency per engine and the MindSpore training step against the fp32 MatMul peak, and
end-to-end sampling against its U-Net calls; Markdown + JSON. This process only orchestrates: the models are exported in a
child process, every measurement runs in a worker (bench/harness.py)."""
from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import onnx

from ..runtime.backends import BACKENDS
from ..runtime.errors import ToolkitError, first_line
from ..runtime.files import write_text_atomic
from ..runtime.manifest import Manifest, manifest_path_for

from .harness import Log, Worker, WorkerFailed, in_child, load_average, machine, rotate, start_workers, summarize, table

ENGINES = tuple(BACKENDS)
PEAK = "fp32 matmul peak"
TRAIN_STEPS = {"train step (decomposed GroupNorm)": False, "train step": True}  # label: fused GroupNorm
TRAIN_FLOPS = 3  # a training step counted as 3x the forward FLOPs (forward, and backward's two products)
MATMUL_SIZE = 2048
E2E_RUNS = (("ddpm", 200), ("ddim", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10))
SCHEDULER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++"}


@dataclass
class BenchSettings:
    work: Path  # absolute: the exported models
    quick: bool  # a tiny model (without `checkpoint`), 3 calls per engine and batch, 2 s of calls at most
    checkpoint: Optional[Path]  # None: an untrained model (tutorial-size, or tiny with `quick`)
    batches: Tuple[int, ...]
    train_batches: Tuple[int, ...]  # batch sizes of the training step
    repeats: Optional[int]  # timed calls per engine and batch (None: 10, quick 3)
    threads: int
    engines: Tuple[str, ...]
    images: int  # per end-to-end run

    def __post_init__(self) -> None:
        self.repeats = self.repeats or (3 if self.quick else 10)
        self.budget_s = 2.0 if self.quick else 20.0  # per engine and batch: a slow engine gets fewer calls


def count_flops(model: onnx.ModelProto | str | Path, batch: int = 1) -> int:
    """FLOPs of one forward pass at `batch`: 2 per multiply-add of Conv, ConvTranspose, MatMul and Gemm, on the
    shapes that ONNX shape inference gives once the inputs' symbolic batch axis is pinned to `batch`."""
    model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    for tensor in pinned.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    graph = onnx.shape_inference.infer_shapes(pinned).graph
    shapes = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
              for info in [*graph.input, *graph.value_info, *graph.output]
              if all(d.HasField("dim_value") for d in info.type.tensor_type.shape.dim)}
    shapes.update({init.name: list(init.dims) for init in graph.initializer})
    total = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        (x, w), y = (shapes[name] for name in node.input[:2]), shapes[node.output[0]]
        if node.op_type == "Conv":  # weight (C_out, C_in / group, kh, kw): a multiply-add per weight per output pixel
            total += 2 * prod(y) * prod(w[1:])
        elif node.op_type == "ConvTranspose":  # weight (C_in, C_out / group, kh, kw): every input scatters a kernel
            total += 2 * prod(x) * prod(w[1:])
        elif node.op_type == "MatMul":
            total += 2 * prod(y) * x[-1]
        else:  # Gemm: (M, K) x (K, N), or A transposed
            transposed = any(a.name == "transA" and a.i for a in node.attribute)
            total += 2 * prod(y) * x[0 if transposed else 1]
    return total


def make_models(work: str, formats: List[str], checkpoint: Optional[str], tiny: bool) -> Dict[str, Any]:
    """`checkpoint` (None: an untrained tutorial-size U-Net, 8x8 if `tiny`) exported to `formats` in `work`, the
    ONNX twice (optimised and plain graph), without the numeric gate: {checkpoint, artifacts, errors}, with the
    checkpoint relative to the working folder (None: untrained) and each artifact's `file` relative to `work`."""
    from ..train import prepare_mindspore

    prepare_mindspore()
    import mindspore as ms

    from ..export.formats import format_module
    from ..export.pipeline import ExportRequest, export_checkpoint
    from ..runtime.config import Config, ModelConfig
    from ..train.checkpoint import resolve_checkpoint_path, save_checkpoint
    from ..train.model import build_unet

    if checkpoint is None:
        ms.set_seed(0)
        config = Config(model=ModelConfig(image_size=8, channels=1, dim=8, dim_mults=(1, 2))) if tiny else Config()
        source = save_checkpoint(Path(work) / "untrained.ckpt", config, step=0, net=build_unet(config.model))
    else:
        source = resolve_checkpoint_path(checkpoint)
    result: Dict[str, Any] = {"checkpoint": checkpoint and os.path.relpath(source), "artifacts": [], "errors": {}}
    for fmt in formats:
        for graph, optimize in ({"optimized": True, "plain": False} if fmt == "onnx" else {None: True}).items():
            out = Path(work) / f"unet{'-' + graph if graph else ''}{format_module(fmt).SUFFIX}"
            try:
                export_checkpoint(Path(source), ExportRequest(fmt, out, gate=None, optimize=optimize),
                                  log=lambda line: None)  # the bench logs its own progress
                result["artifacts"].append({"format": fmt, "graph": graph, "file": out.name})
            except Exception as exc:  # a format that cannot be made here (e.g. no Lite bridge) is reported
                result["errors"][f"export {fmt}"] = f"{type(exc).__name__}: {first_line(exc)}"
    return result


def engine_rows(s: BenchSettings, artifacts: List[Dict[str, Any]], missing: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """A worker spec per requested engine and artifact of its format; an engine without one goes to `missing`."""
    rows = {}
    for engine in s.engines:
        spec = BACKENDS[engine]
        if not any(a["format"] == spec.format for a in artifacts):
            missing[engine] = f"no {spec.format} export (see Not measured)"
        for artifact in [a for a in artifacts if a["format"] == spec.format]:
            label = engine + (f" ({artifact['graph']} graph)" if artifact["graph"] else "")
            rows[label] = {"kind": engine, "artifact": str(s.work / artifact["file"]), "threads": s.threads}
    return rows


class Bench:
    """One run: make the models, start the workers, time them, close them; `run()` returns the result."""

    def __init__(self, settings: BenchSettings, log: Log):
        self.s, began = settings, time.perf_counter()
        self.log = lambda line: log(f"[{time.perf_counter() - began:6.1f} s] {line}")
        self.workers: Dict[str, Worker] = {}
        self.errors: Dict[str, str] = {}
        self.missing: Dict[str, str] = {}  # rows that were not measured, and why (short)
        self.result: Dict[str, Any] = {}
        self.peak_times: List[float] = []  # the MatMul peak's calls, from every rotation

    def run(self) -> Dict[str, Any]:
        began = time.perf_counter()
        self.result.update(machine=machine(), load_average_start=load_average(),
                           started=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
        self._prepare()
        try:
            self._start_workers()
            self._unet_latency()
            self._training()
            self._peak()
            self._end_to_end()
        finally:
            for worker in self.workers.values():
                worker.close()
        self.result.update(errors=self.errors, missing=self.missing, load_average_end=load_average(),
                           duration_s=round(time.perf_counter() - began, 1))
        return self.result

    def _prepare(self) -> None:
        self.log("preparing models (checkpoint -> exports) ...")
        models = in_child(make_models, work=str(self.s.work), tiny=self.s.quick,
                          formats=sorted({BACKENDS[e].format for e in self.s.engines} | {"onnx"}),
                          checkpoint=self.s.checkpoint and str(self.s.checkpoint))
        self.errors.update(models["errors"])
        onnx_file = next((a["file"] for a in models["artifacts"] if a["format"] == "onnx"), None)
        if onnx_file is None:
            raise ToolkitError(f"could not export the model to ONNX: {models['errors'].get('export onnx')}")
        onnx_path = self.s.work / onnx_file
        self.flops_per_image, self.manifest = count_flops(onnx_path), Manifest.load(manifest_path_for(onnx_path))
        self.result.update(models=models, model={"config": self.manifest.config["model"], "timesteps":
                           self.manifest.timesteps, "gflop_per_image": self.flops_per_image / 1e9})

    def _start_workers(self) -> None:
        rows = engine_rows(self.s, self.result["models"]["artifacts"], self.missing)
        rows[PEAK] = {"kind": "matmul", "size": MATMUL_SIZE, "threads": self.s.threads}
        rows.update({label: {"kind": "train", "config": self.manifest.config, "fused": fused}
                     for label, fused in TRAIN_STEPS.items()})
        self.log(f"starting workers: {', '.join(rows)} ...")
        self.workers = start_workers(rows, self.errors)
        self.missing.update({label: "failed (see Not measured)" for label in rows if label not in self.workers})

    def _rotation(self, labels: List[str], what: str, batches: Tuple[int, ...], flops: float, key: str
                  ) -> List[Dict[str, Any]]:
        """Rows {key: label, batch, summary at `flops` per item} of the workers `labels` and the MatMul peak, timed
        in turn at each of `batches`; the peak's calls are kept for `_peak`."""
        rows = []
        for batch in batches:
            workers = {label: worker for label, worker in self.workers.items()
                       if label in (*labels, PEAK) and worker.proc.is_alive()}
            self.log(f"{what} at batch {batch} ({', '.join(workers)}; in turn) ...")
            measured = rotate(workers, "time", {"batch": batch}, self.s.repeats, self.s.budget_s, self.errors)
            self.peak_times += measured.pop(PEAK, [])
            rows += [{key: label, "batch": batch, **summarize(times, flops * batch)} for label, times in measured.items()]
        return rows

    def _unet_latency(self) -> None:
        engines = [label for label in self.workers if is_unet_engine(label)]
        rows = self._rotation(engines, "U-Net calls", self.s.batches, self.flops_per_image, "backend")
        for row in rows:
            row["vs_first"] = row["median_s"] / next(r for r in rows if r["batch"] == row["batch"])["median_s"]
        self.result["unet"] = rows

    def _training(self) -> None:
        """The training step before and after the fused GroupNorm, in turn with the peak; *speed-up* is the old
        step's median over this one's at the same batch."""
        rows = self._rotation(list(TRAIN_STEPS), "MindSpore train step", self.s.train_batches,
                              TRAIN_FLOPS * self.flops_per_image, "step")
        for row in rows:
            old = next((r for r in rows if r["batch"] == row["batch"] and not TRAIN_STEPS[r["step"]]), None)
            row["speedup"] = old["median_s"] / row["median_s"] if old else None
        self.result["training"] = rows

    def _peak(self) -> None:
        """The MatMul peak over every rotation, and each row's fraction of it."""
        peak = summarize(self.peak_times, 2 * MATMUL_SIZE ** 3) if self.peak_times else {}
        self.result["peak"] = {"size": MATMUL_SIZE, "engine": "onnxruntime MatMul (MLAS)", **peak}
        for row in self.result["unet"] + self.result["training"]:
            for stat in ("best", "median"):
                row[f"peak_fraction_{stat}"] = row[f"gflops_{stat}"] / peak[f"gflops_{stat}"] if peak else None

    def _end_to_end(self) -> None:
        """`Sampler.sample` per scheduler on the first engine, against the time spent in its U-Net calls."""
        runs, n = [], self.s.images
        engine, worker = next(((label, worker) for label, worker in self.workers.items()
                               if is_unet_engine(label) and worker.proc.is_alive()), (None, None))
        for name, steps in E2E_RUNS if worker else ():
            steps = min(steps, self.manifest.timesteps)
            self.log(f"end to end: {n} images, {name}-{steps} ({engine}) ...")
            try:
                runs.append({"scheduler": name, "steps": steps, **worker.ask("sample", n=n, scheduler=name, steps=steps)})
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


# ---- the report ------------------------------------------------------------------------------------
def number(value: Optional[float], digits: int = 2, scale: float = 1, unit: str = "") -> str:
    """`value` x `scale` with `digits` decimals and `unit`; "n/a" for None."""
    return "n/a" if value is None else f"{value * scale:.{digits}f}{unit}"


def percent(value: Optional[float]) -> str:
    return number(value, 0, 100, "%")


def milliseconds(seconds: float) -> str:
    return number(seconds, 1 if seconds < 10 else 0, 1e3)


def is_unet_engine(label: str) -> bool:
    """Whether a worker's row times U-Net calls (not the MatMul peak or a training step)."""
    return label != PEAK and label not in TRAIN_STEPS


def peak_cell(row: Dict[str, Any]) -> str:
    """A row's % of the peak: best over best (median over median)."""
    return f"{percent(row['peak_fraction_best'])} ({percent(row['peak_fraction_median'])})"


def render_training(rows: List[Dict[str, Any]]) -> List[str]:
    """The training-step section."""
    return ["\n## MindSpore training step\n\nThe toolkit's jit `TrainStep` as `ms-ddpm train` runs it (draw the batch, "
            "step, read the loss back) on random images, timed in turn with the MatMul peak; the step before the fused "
            "GroupNorm (*decomposed*, the exporters' spelling) and the step `train` runs now, same model and numbers. "
            f"*GFLOP/s* counts a step as {TRAIN_FLOPS}x the forward FLOPs; *speed-up* is the decomposed step's "
            "median over the row's.\n",
            table(["step", "batch", "n", "median s", "min s", "GFLOP/s median", "GFLOP/s best", "% of peak", "speed-up"],
                  [[r["step"], r["batch"], r["n"], number(r["median_s"], 3), number(r["min_s"], 3),
                    number(r["gflops_median"], 1), number(r["gflops_best"], 1), peak_cell(r), number(r["speedup"])]
                   for r in rows])]


def render_markdown(result: Dict[str, Any]) -> str:
    """Machine, model and peak; U-Net calls per engine; the training step; end to end; what was not measured."""
    m, model, peak, e2e = result["machine"], result["model"], result["peak"], result["end_to_end"]
    cfg, first = model["config"], next((r["backend"] for r in result["unet"]), "the first engine")
    checkpoint = result["models"]["checkpoint"]
    unet = [[r["backend"], r["batch"], r["n"], milliseconds(r["median_s"]), milliseconds(r["min_s"]),
             number(r["gflops_median"], 1), number(r["gflops_best"], 1),
             peak_cell(r), number(r["vs_first"])]
            for r in result["unet"]] + [[label, "-", 0, why, *["n/a"] * 5] for label, why in result["missing"].items()]
    out = [f"# Benchmark results\n\nGenerated by `{result['command']}` on {result['started']}; the run took "
           f"{result['duration_s']:.0f} s. Load average (1/5/15 min) at start {result['load_average_start']}, at end "
           f"{result['load_average_end']}. How it measures: docs/benchmarks.md.\n",
           f"**CPU**: {m['cpu']}, {m['cpus']} cores; flags: {', '.join(m['isa']) or 'none of note'}; {m['platform']}, "
           f"Python {m['python']}; {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.\n",
           f"**Model**: U-Net {cfg['image_size']}x{cfg['image_size']}x{cfg['channels']}, dim {cfg['dim']}, dim_mults "
           f"{cfg['dim_mults']}, T={model['timesteps']}; {model['gflop_per_image']:.3f} GFLOP per image (Conv, "
           f"ConvTranspose, MatMul, Gemm of the exported ONNX). Checkpoint: "
           f"{f'`{checkpoint}`' if checkpoint else 'untrained (random weights)'}.\n",
           f"**fp32 MatMul peak** ({peak['size']}x{peak['size']} float32 MatMul on {peak['engine']}, timed in turn with "
           "the U-Net calls and the training steps): " + (f"**{peak['gflops_best']:.0f} GFLOP/s** best, {peak['gflops_median']:.0f} median "
                                  f"over {peak['n']} calls" if "n" in peak else "**not measured** (see Not measured)")
           + ". *% of peak*: an engine's best call over the best MatMul, and (in brackets) its median over the median "
           "MatMul.\n",
           "\n## U-Net, one call\n\nEngines timed in turn, one call each; median and min over the calls (a slow engine "
           f"gets fewer: see n). *x first* is median time over {first}'s at the same batch.\n",
           table(["backend", "batch", "n", "median ms", "min ms", "GFLOP/s median", "GFLOP/s best", "% of peak",
                  "x first"], unet)]
    if result["training"]:
        out += render_training(result["training"])
    if e2e["runs"]:
        out += [f"\n## End to end: {e2e['images']} images\n\n`Sampler.sample` on {e2e['engine']}, one run each, batch "
                f"{e2e['images']} per U-Net call; *U-Net s* is the time spent inside the U-Net calls of that run, "
                "*x U-Net* the whole run over it, *x DDPM* the run over the DDPM run.\n",
                table(["sampler", "seconds", "U-Net s", "x U-Net", "x DDPM"], [
                    [f"{SCHEDULER_NAMES[r['scheduler']]}-{r['steps']}", number(r["seconds"]), number(r["unet_s"]),
                     number(r["seconds"] / r["unet_s"], 3), number(r["vs_ddpm"], 3)] for r in e2e["runs"]])]
    if result["errors"]:
        out += ["\n## Not measured\n\n"] + [f"- {k}: {v}\n" for k, v in result["errors"].items()]
    return "\n".join(out)
