"""The `bench` and `quality` commands (heavy imports inside them). Every path is made absolute against the caller's
working directory before any child process starts; without --work, scratch goes to a temporary folder."""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Tuple

import typer

from ..runtime.errors import ToolkitError, check_minimum
from ..runtime.files import check_output_dir


def _absolute(path: Optional[Path], must_exist: str = "") -> Optional[Path]:
    """`path` against the caller's working directory; `must_exist` names it in the not-found error."""
    path = path and Path(os.path.abspath(path.expanduser()))
    if must_exist and path and not path.exists():
        raise ToolkitError(f"{must_exist} not found: {path}")
    return path


def _outputs(out: Path) -> Path:
    """OUT without its suffix, absolute, after checking that OUT.md and OUT.json can be written."""
    out = _absolute(out).with_suffix("")
    for suffix in (".md", ".json"):
        check_output_dir(out.with_suffix(suffix))
    return out


def _ints(text: str, option: str, minimum: int) -> Tuple[int, ...]:
    """Comma-separated integers >= `minimum`."""
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or not all(v.isdigit() and int(v) >= minimum for v in values):
        raise ToolkitError(f"{option} must be comma-separated integers >= {minimum}, got {text!r}")
    return tuple(map(int, values))


@contextlib.contextmanager
def _scratch(work: Optional[Path], prefix: str) -> Iterator[Path]:
    """`work` (created if missing), or a temporary folder removed at the end."""
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


def command_line(ctx: typer.Context) -> str:
    """The command as the user typed it: `ms-ddpm ...` or `python cli.py ...` (the CLI's program name)."""
    return f"{ctx.find_root().info_name} {shlex.join(sys.argv[1:])}"


def bench(
    ctx: typer.Context,
    out: Path = typer.Option(Path("bench-results"), help="Writes OUT.md and OUT.json (any suffix is replaced)."),
    quick: bool = typer.Option(False, "--quick", help="A few minutes: 3 calls per engine, and a tiny untrained model "
                                                        "unless --checkpoint is given."),
    checkpoint: Optional[Path] = typer.Option(None, help="Model to time (.ckpt or run directory); default: an untrained "
                                                         "tutorial-size U-Net (tiny with --quick)."),
    work: Optional[Path] = typer.Option(None, help="Keeps the exported models here (default: a "
                                                   "temporary folder, removed at the end)."),
    batches: str = typer.Option("1,16,64", help="U-Net batch sizes to time."),
    train_batches: str = typer.Option("16,64", help="Batch sizes of the MindSpore training step."),
    repeats: Optional[int] = typer.Option(None, help="Timed calls per engine and batch (default 10; 3 with --quick)."),
    threads: int = typer.Option(os.cpu_count() or 1, help="Threads for every engine."),
    backends: str = typer.Option("onnxruntime,mslite,mindspore,openvino",
                                 help="The runtime's backends to time (mindspore: with and without the oneDNN AVX2 "
                                      "cap; one that cannot open is reported)."),
    images: int = typer.Option(64, help="Images per end-to-end sampling run."),
    max_load: Optional[float] = typer.Option(None, help="Wait (up to 10 min) until the 1-minute load average is below this."),
) -> None:
    """Benchmark U-Net calls per engine and the MindSpore training step against the fp32 MatMul peak, and end-to-end
    sampling; Markdown + JSON."""
    from .latency import ENGINES, BenchSettings, run_bench

    engines = tuple(b.strip() for b in backends.split(",") if b.strip())
    if not engines or set(engines) - set(ENGINES):
        raise ToolkitError(f"--backends takes {', '.join(ENGINES)}; got {backends!r}")
    for option, value in (("--threads", threads), ("--images", images), ("--repeats", repeats)):
        check_minimum(option, value)
    batch_sizes, train_sizes = _ints(batches, "--batches", 1), _ints(train_batches, "--train-batches", 1)
    out = _outputs(out)
    checkpoint, work = _absolute(checkpoint, "checkpoint"), _absolute(work)
    deadline = time.time() + 600
    while max_load is not None and os.getloadavg()[0] > max_load and time.time() < deadline:
        typer.echo(f"load average {os.getloadavg()[0]:.2f} > {max_load}: waiting ...")
        time.sleep(30)
    with _scratch(work, "ms-ddpm-bench.") as folder:
        settings = BenchSettings(work=folder, quick=quick, checkpoint=checkpoint, threads=threads, engines=engines,
                                 batches=batch_sizes, train_batches=train_sizes, repeats=repeats, images=images)
        run_bench(settings, out, log=typer.echo, command=command_line(ctx))


def quality(
    ctx: typer.Context,
    checkpoint: Path = typer.Option(..., help="The trained model (.ckpt or run directory)."),
    out: Path = typer.Option(Path("quality"), help="Writes OUT.md, OUT.json and a picture per row in OUT/ (any suffix "
                                                   "is replaced)."),
    work: Optional[Path] = typer.Option(None, help="Keeps the ONNX export, the classifier and the features here, and "
                                                   "reuses the classifier (default: a temporary folder, removed at the end)."),
    rows: Optional[str] = typer.Option(None, help="Comma-separated rows scheduler:steps[:eta=E][:spacing=S][:clip]; "
                                                  "differences are to the first (default: DDPM-200, DDPM-50, DDIM-50 "
                                                  "eta 0 and 1, dpmpp-20, dpmpp-sde and dpmpp3m at 50, 20, 10, 5)."),
    n: int = typer.Option(1000, help="Samples per row and seed."),
    seeds: str = typer.Option("0", help="Comma-separated sampling seeds; each row pools its samples of every seed."),
    resamples: int = typer.Option(200, help="Bootstrap resamplings of the differences' intervals."),
    classifier: Optional[Path] = typer.Option(None, help="A classifier ONNX from an earlier run's WORK/classifier.onnx "
                                                         "(default: train one into WORK, or reuse it)."),
    classifier_steps: int = typer.Option(800, help="Training steps of the classifier."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads (default: its own)."),
) -> None:
    """Sample quality per sampler: Fréchet distance on a dataset classifier's features and its paired difference to
    the first row with a bootstrap interval, score, class histogram, a picture per row."""
    from .quality import DEFAULT_ROWS, parse_rows, run_quality

    check_minimum("--n", n, 2)
    check_minimum("--resamples", resamples, 10)
    row_specs = parse_rows(DEFAULT_ROWS if rows is None else rows)
    seed_values = _ints(seeds, "--seeds", 0)
    out = _outputs(out)
    checkpoint, classifier = _absolute(checkpoint, "checkpoint"), _absolute(classifier, "classifier")
    with _scratch(_absolute(work), "ms-ddpm-quality.") as folder:
        run_quality(checkpoint, out, work=folder, n=n, seeds=seed_values, rows=row_specs,
                    resamples=resamples, classifier=classifier, classifier_steps=classifier_steps, threads=threads,
                    log=typer.echo, command=command_line(ctx))
