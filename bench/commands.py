"""CLI commands of the benchmark module: `bench` and `quality`. Heavy imports live inside the functions."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ..runtime.errors import ToolkitError


def _parse_ints(text: str, option: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ToolkitError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ToolkitError(f"{option} must be positive integers, got {text!r}")
    return values


def bench(
    out: Path = typer.Option(Path("bench-results"), help="Writes OUT.md and OUT.json (any suffix is replaced)."),
    quick: bool = typer.Option(False, "--quick", help="A few minutes: 3 calls per backend, and a tiny untrained model "
                                                        "unless --checkpoint is given."),
    checkpoint: Optional[Path] = typer.Option(None, help="Model to time (.ckpt or run directory); default: an untrained "
                                                         "tutorial-size U-Net (tiny with --quick)."),
    work: Path = typer.Option(Path("runs/bench"), help="Scratch directory: exported models and worker logs."),
    batches: str = typer.Option("1,16,64", help="U-Net batch sizes to time."),
    repeats: Optional[int] = typer.Option(None, help="Timed calls per backend and batch (default 10; 3 with --quick)."),
    threads: Optional[int] = typer.Option(None, help="Threads for every backend (default: all CPUs)."),
    backends: str = typer.Option("onnxruntime,mslite,mindspore", help="Backends to time (mindspore: both dispatch settings)."),
    images: int = typer.Option(64, help="Images per end-to-end sampling run."),
    explore: Optional[bool] = typer.Option(None, "--explore/--no-explore",
                                           help="Also time onnxruntime variants (default: on, off with --quick)."),
    max_load: Optional[float] = typer.Option(None, help="Wait (up to 10 min) until the 1-minute load average is below this."),
) -> None:
    """Benchmark U-Net calls per backend, end-to-end sampling, training steps and cold start; Markdown + JSON."""
    import os
    import time

    from .run import BenchSettings, run_bench

    chosen = tuple(b.strip() for b in backends.split(",") if b.strip())
    unknown = set(chosen) - {"onnxruntime", "mslite", "mindspore"}
    if unknown or not chosen:
        raise ToolkitError(f"--backends takes onnxruntime, mslite, mindspore; got {backends!r}")
    if threads is not None and threads < 1:
        raise ToolkitError(f"--threads must be >= 1, got {threads}")
    if images < 1:
        raise ToolkitError(f"--images must be >= 1, got {images}")
    if repeats is not None and repeats < 1:
        raise ToolkitError(f"--repeats must be >= 1, got {repeats}")
    if checkpoint is not None and not checkpoint.exists():
        raise ToolkitError(f"checkpoint not found: {checkpoint}")
    if max_load is not None:
        deadline = time.time() + 600
        while os.getloadavg()[0] > max_load and time.time() < deadline:
            typer.echo(f"load average {os.getloadavg()[0]:.2f} > {max_load}: waiting ...")
            time.sleep(30)
    settings = BenchSettings(quick=quick, checkpoint=checkpoint, work=work, batches=_parse_ints(batches, "--batches"),
                             repeats=repeats, backends=chosen, explore=explore, e2e_images=images,
                             **({"threads": threads} if threads else {}))
    command = "python cli.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_bench(settings, out, log=typer.echo, command=command)


def quality(
    checkpoint: Path = typer.Option(..., help="The trained model (.ckpt or run directory)."),
    out: Path = typer.Option(Path("quality"), help="Writes OUT.md, OUT.json and OUT.png (any suffix is replaced)."),
    work: Path = typer.Option(Path("runs/quality-eval"), help="Scratch: the ONNX export and the classifier."),
    n: int = typer.Option(2000, help="Samples per scheduler and seed."),
    seeds: str = typer.Option("0", help="Comma-separated sampling seeds (the spread between seeds shows the noise)."),
    classifier: Optional[Path] = typer.Option(None, help="A classifier ONNX from `python -m bench.classifier` "
                                                         "(default: train one into WORK, or reuse it)."),
    classifier_steps: int = typer.Option(800, help="Training steps of the classifier."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads (default: its own)."),
) -> None:
    """Sample quality per scheduler: Fréchet distance on a dataset classifier's features, score, class histogram."""
    from .quality_run import run_quality

    if n < 2:
        raise ToolkitError(f"--n must be >= 2, got {n}")
    if not checkpoint.exists():
        raise ToolkitError(f"checkpoint not found: {checkpoint}")
    seed_values = tuple(int(s) for s in seeds.split(",") if s.strip())
    command = "python cli.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_quality(checkpoint, out, work=work, n=n, seeds=seed_values, classifier=classifier,
                classifier_steps=classifier_steps, threads=threads, log=typer.echo, command=command)
