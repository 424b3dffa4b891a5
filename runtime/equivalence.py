"""The runtime side of the end-to-end check and of the sampler-step gate: whole samples from given noise,
and how samples are compared.

    python -m ms_ddpm.runtime.equivalence ARTIFACT NOISE.npz OUT.npz [--backend NAME]

reads x_T and step_noise from NOISE.npz (several cases: keys x_T<suffix>, step_noise<suffix>), samples on
the artifact's backend with its default scheduler (DDPM at all T steps for a U-Net; a sampler-step model's
own) and writes each x_0 (key x0<suffix>, float32, unclipped) to OUT.npz. It runs in its own process and
never imports MindSpore, so the MindSpore reference (export/end_to_end.py) and a MindSpore Lite backend
never share a process.

A reduced precision (the openvino backend's bf16) is no silent option: `check_precision` samples the same
images from the same noise in it and in fp32 on the same backend, and needs PSNR >= PRECISION_PSNR_MIN_DB.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from .errors import VerificationFailed, run_main

PSNR_MIN_DB = 40.0
MAX_ABS = 1e-3
# Images in a reduced precision vs fp32, same backend, noise and default scheduler (PRECISION_IMAGES images).
# bf16 on OpenVINO 2026.4 (AMX Xeon), dpmpp-sde at 20 steps, 16 images, seeds 0-4: untrained tutorial-size
# U-Net 50.2-50.6 dB (at 10 steps, the default now: 50.0-50.1 dB), the `make demo` model trained 1,200 steps
# 56.8-58.1 dB (DDPM-200: 59.3 dB), the tests' tiny U-Net 64.7-65.8 dB (its sampler-step artifact the same).
# The bound keeps 5 dB below the lowest.
PRECISION_PSNR_MIN_DB = {"bf16": 45.0}
PRECISION_IMAGES = 16


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


def precision_figures(artifact: Path, backend: str, precision: str, *, images: int = PRECISION_IMAGES,
                      seed: int = 0) -> Dict[str, float]:
    """`compare_samples` of `images` x_0 sampled on `backend` in fp32 (reference) and in `precision`, from the
    same noise of `seed`, with the artifact's default scheduler."""
    from .pipeline import Sampler

    samples = []
    for each in ("fp32", precision):
        sampler = Sampler.load(artifact, backend, precision=each)
        scheduler = sampler.scheduler()
        samples.append(sampler.denoise(scheduler, *sampler.draw_noise(images, scheduler.noise_steps, seed)))
    return compare_samples(*samples)


def check_precision(artifact: Path, backend: str, precision: str, *, seed: int = 0,
                    log: Callable[[str], None] = print) -> Dict[str, float]:
    """`precision_figures`, judged against PRECISION_PSNR_MIN_DB; raises VerificationFailed below it."""
    figures = precision_figures(artifact, backend, precision, seed=seed)
    bound = PRECISION_PSNR_MIN_DB[precision]
    passed = figures["psnr_db"] >= bound
    summary = (f"{precision} vs fp32 on {backend} ({PRECISION_IMAGES} images, default scheduler, seed {seed}): "
               f"PSNR {figures['psnr_db']:.1f} dB (>= {bound:g}), max abs {figures['max_abs']:.2e}: "
               f"{'PASS' if passed else 'FAIL'}")
    log(summary)
    if not passed:
        raise VerificationFailed(f"{artifact} in {precision} on {backend} strays from its fp32 images: {summary}")
    return figures


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
