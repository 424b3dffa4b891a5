"""The runtime side of the end-to-end check: DDPM from given noise, and how samples are compared.

    python -m runtime.equivalence ARTIFACT NOISE.npz OUT.npz [--backend NAME]

reads x_T and step_noise from NOISE.npz, runs all T DDPM steps on the backend and writes x_0 (key
`x0`, float32, unclipped) to OUT.npz. It runs in its own process and never imports MindSpore, so
the MindSpore reference (export/end_to_end.py) and a MindSpore Lite backend never share a process.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .errors import ToolkitError

PSNR_MIN_DB = 40.0
MAX_ABS = 1e-3


def compare_samples(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, float]:
    """PSNR (peak-to-peak 2, the [-1, 1] scale) and max |difference|, both on samples clipped to
    [-1, 1] as images show them; `max_abs_unclipped` is reported for information."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    difference = np.clip(reference, -1, 1) - np.clip(candidate, -1, 1)
    mse = float(np.mean(difference**2))
    return {"psnr_db": math.inf if mse == 0 else 10 * math.log10(4.0 / mse),
            "max_abs": float(np.abs(difference).max()),
            "max_abs_unclipped": float(np.abs(reference - candidate).max())}


def runtime_ddpm(artifact: Path, x_T: np.ndarray, step_noise: np.ndarray, backend: Optional[str] = None) -> np.ndarray:
    """x_0 from the runtime's DDPM scheduler with all T steps and the given noise."""
    from .pipeline import Sampler

    sampler = Sampler.load(artifact, backend)
    return sampler.denoise(sampler.scheduler("ddpm"), x_T, step_noise)


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("noise", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--backend", default=None)
    args = parser.parse_args(argv)
    try:
        with np.load(args.noise, allow_pickle=False) as noise:
            x0 = runtime_ddpm(args.artifact, noise["x_T"], noise["step_noise"], args.backend)
        np.savez(args.out, x0=x0)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
