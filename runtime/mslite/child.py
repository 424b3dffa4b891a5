"""Run the `mslite` backend in a child process, for callers that have imported MindSpore (which cannot
share a process with Lite): the exporter's numeric gate and the test-suite.

    predict_in_child("unet.mindir", [(x, t), ...]) -> [eps, ...]

Inputs and outputs travel as .npz files in a private temporary directory; the model is loaded once
for all cases. A child that fails or crashes becomes a one-line ToolkitError.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ToolkitError
from .process import run_child, signal_name


def predict_in_child(model_path: str | os.PathLike, cases: Sequence[Tuple[np.ndarray, np.ndarray]],
                     threads: Optional[int] = None, timeout: float = 600) -> List[np.ndarray]:
    """eps for each (x, t) case, computed by MsliteBackend(model_path, threads) in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="mslite-child.") as work:
        inputs, outputs = Path(work) / "inputs.npz", Path(work) / "outputs.npz"
        np.savez(inputs, **{f"x{i}": x for i, (x, _) in enumerate(cases)},
                 **{f"t{i}": t for i, (_, t) in enumerate(cases)})
        result = run_child(["runtime.mslite.child", str(model_path), str(inputs), str(outputs), str(threads or 0)],
                           timeout, "the MindSpore Lite child process")
        if result.returncode != 0:
            raise ToolkitError(_failure(result))
        with np.load(outputs, allow_pickle=False) as data:
            return [data[f"eps{i}"] for i in range(len(cases))]


def _failure(result: subprocess.CompletedProcess) -> str:
    if result.returncode < 0:
        return f"the MindSpore Lite child process crashed ({signal_name(-result.returncode)})"
    errors = [line[len("error: "):] for line in result.stderr.splitlines() if line.startswith("error: ")]
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return errors[0] if errors else f"the MindSpore Lite child process failed (exit {result.returncode}): {tail}"


def _checked(x: np.ndarray, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A U-Net case: at least one image, and one integer timestep per image."""
    if x.ndim < 1 or len(x) == 0:
        raise ToolkitError(f"x must hold at least one image, got shape {x.shape}")
    if t.shape != (len(x),) or not np.issubdtype(t.dtype, np.integer):
        raise ToolkitError(f"t must be integer timesteps of shape ({len(x)},), got {t.dtype} {t.shape}")
    return x, t


def main(argv: List[str]) -> None:
    """Child side: MODEL INPUTS.npz OUTPUTS.npz THREADS."""
    from ..backends import Backend
    from .backend import MsliteBackend

    model, inputs, outputs, threads = argv
    try:
        lite = MsliteBackend(model, threads=int(threads) or None, input_names=("x", "t"))
        fixed = lite.input_shapes[0][0]
        eps_of = Backend("mslite", lite, fixed_batch=fixed if fixed > 0 else None)  # chunks and pads a fixed batch
        with np.load(inputs, allow_pickle=False) as data:
            count = len(data.files) // 2
            eps = {f"eps{i}": eps_of(*_checked(data[f"x{i}"], data[f"t{i}"])) for i in range(count)}
        np.savez(outputs, **eps)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(exc.exit_code)
    os._exit(0)  # results are written; skip Lite's exit-time destructors (one has crashed at exit)


if __name__ == "__main__":
    main(sys.argv[1:])
