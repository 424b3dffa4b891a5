"""ONNX -> MindSpore Lite cloud MindIR (`.mindir`), with the Lite converter run in a child process.

    python -m runtime.mslite.convert model.onnx model.mindir

The converter runs in a child because (1) it can crash the process (a Lite thread-pool destructor
segfaulted at exit after converting and running a large model in one process) and (2) Lite cannot
share a process with MindSpore, which an exporting process has imported. A child that fails or dies
becomes a one-line ToolkitError; the output file appears atomically, only on success.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ToolkitError
from ..files import atomic_path
from ..onnx_external import check_external_data
from .native import logged_errors
from .process import run_child, signal_name

SUFFIX = ".mindir"
CHILD_FLAG = "--child"


def convert_onnx(onnx_path: str | os.PathLike, output_path: str | os.PathLike, timeout: float = 900) -> Path:
    """Convert `onnx_path` to a Lite cloud MindIR at `output_path` (must end in .mindir); returns the path."""
    onnx_path, output_path = Path(onnx_path), Path(output_path)
    if not onnx_path.is_file():
        raise ToolkitError(f"ONNX model not found: {onnx_path}")
    check_external_data(onnx_path)
    if output_path.suffix != SUFFIX:
        raise ToolkitError(f"a MindSpore Lite model is written as {SUFFIX} (cloud MindIR), got {output_path.name}")
    with atomic_path(output_path, suffix=SUFFIX) as tmp, \
            tempfile.TemporaryDirectory(prefix=".mslite-convert.", dir=tmp.parent) as work:
        base = Path(work) / "model"
        _run_child(onnx_path, base, timeout)
        produced = base.with_name(base.name + SUFFIX)
        if not produced.is_file():
            raise ToolkitError(f"the Lite converter reported success but wrote no {produced.name}")
        os.replace(produced, tmp)  # atomic_path gives it the usual permissions
    return output_path



def _run_child(onnx_path: Path, base: Path, timeout: float) -> None:
    result = run_child(["runtime.mslite.convert", CHILD_FLAG, str(onnx_path.resolve()), str(base)], timeout,
                       f"the Lite converter on {onnx_path}")
    if result.returncode != 0:
        raise ToolkitError(_failure(result, onnx_path))


def _failure(result: subprocess.CompletedProcess, onnx_path: Path) -> str:
    """One line: how the child failed, with the converter's first logged error (the root cause) if any."""
    logged = logged_errors(result.stderr)
    own = [line[len("error: "):] for line in result.stderr.splitlines() if line.startswith("error: ")]
    if result.returncode < 0:
        reason = f": {logged[0]}" if logged else ""
        return f"the Lite converter crashed ({signal_name(-result.returncode)}) on {onnx_path}{reason}"
    if logged:
        return f"the Lite converter rejected {onnx_path}: {logged[0]}"
    return own[0] if own else f"the Lite converter failed (exit {result.returncode}) on {onnx_path}"


def _child(onnx_path: str, base: str) -> None:
    """Convert in this (child) process, then leave without running Lite's exit-time destructors."""
    from .engine import convert_onnx_here

    try:
        convert_onnx_here(Path(onnx_path), Path(base))
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(exc.exit_code)
    sys.stdout.flush()
    os._exit(0)  # the model file is complete; skip destructors that have crashed at exit


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == CHILD_FLAG:
        _child(argv[1], argv[2])
    if len(argv) != 2:
        print("usage: python -m runtime.mslite.convert MODEL.onnx OUTPUT.mindir", file=sys.stderr)
        return 2
    try:
        print(convert_onnx(argv[0], argv[1]))
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
