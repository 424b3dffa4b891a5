"""The runtime side of the end-to-end check and of the sampler-step gate: whole samples from given noise,
and how samples are compared.

    python -m ms_ddpm.runtime.equivalence ARTIFACT NOISE.npz OUT.npz [--backend NAME]

reads x_T and step_noise from NOISE.npz (several cases: keys x_T<suffix>, step_noise<suffix>), samples on
the artifact's backend with its default scheduler (DDPM at all T steps for a U-Net; a sampler-step model's
own) and writes each x_0 (key x0<suffix>, float32, unclipped) to OUT.npz. It runs in its own process and
never imports MindSpore, so the MindSpore reference (export/end_to_end.py) and a MindSpore Lite backend
never share a process.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .errors import run_main

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


def runtime_denoise(artifact: Path, noise: Dict[str, np.ndarray], backend: Optional[str] = None) -> Dict[str, np.ndarray]:
    """x_0 (key `x0<suffix>`) for every x_T (`x_T<suffix>`, with `step_noise<suffix>`) in `noise`, sampled on the
    artifact with its default scheduler: DDPM at all T steps for a U-Net, its own for a sampler-step model."""
    from .pipeline import Sampler

    sampler = Sampler.load(artifact, backend)
    scheduler = sampler.scheduler(None if sampler.carries else "ddpm")  # a U-Net: DDPM at all T steps
    return {"x0" + key[3:]: sampler.denoise(scheduler, noise[key], noise["step_noise" + key[3:]])
            for key in noise if key.startswith("x_T")}


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("noise", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--backend", default=None)
    args = parser.parse_args(argv)
    with np.load(args.noise, allow_pickle=False) as noise:
        samples = runtime_denoise(args.artifact, dict(noise), args.backend)
    np.savez(args.out, **samples)


if __name__ == "__main__":
    run_main(main)
