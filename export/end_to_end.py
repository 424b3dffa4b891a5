"""`verify --end-to-end`: whole DDPM samples, runtime vs the MindSpore reference, from the same noise.

Each side runs in its own fresh process: the MindSpore reference sampler (`python -m export.end_to_end`,
this module) draws x_T and every step's z with `draw_sampling_noise(seed)` (the portable noise) and saves them;
the runtime (`python -m runtime.equivalence`) denoises the same noise on the artifact's backend with no
MindSpore loaded (a sampler-step artifact must carry that DDPM). MindSpore and MindSpore Lite therefore
never share a process. The gate: PSNR >= 40 dB and max |difference| <= 1e-3, on the [-1, 1] scale.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from ..runtime.equivalence import MAX_ABS, PSNR_MIN_DB, compare_samples
from ..runtime.errors import ToolkitError, VerificationFailed, run_main
from ..runtime.manifest import Manifest, manifest_path_for
from ..runtime.processes import run_module

DEFAULT_IMAGES = 4


@dataclass(frozen=True)
class EndToEndReport:
    psnr_db: float
    max_abs: float
    max_abs_unclipped: float
    images: int
    steps: int
    seed: int

    @property
    def passed(self) -> bool:
        return self.psnr_db >= PSNR_MIN_DB and self.max_abs <= MAX_ABS

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"end-to-end DDPM ({self.images} images, {self.steps} steps, seed {self.seed}): "
                f"PSNR {self.psnr_db:.1f} dB (>= {PSNR_MIN_DB:g}), max abs {self.max_abs:.2e} (<= {MAX_ABS:g}; "
                f"unclipped {self.max_abs_unclipped:.2e}): {verdict}")


def check_end_to_end(artifact: Path, checkpoint: Path, *, seed: int = 0, images: int = DEFAULT_IMAGES,
                     backend: Optional[str] = None, log: Callable[[str], None] = print) -> EndToEndReport:
    """Run both samplers on the same noise and compare; raises VerificationFailed if the gate fails."""
    manifest = Manifest.load(manifest_path_for(artifact))
    if not manifest.samples_reference_ddpm:
        raise ToolkitError(f"the end-to-end check compares DDPM at all T={manifest.timesteps} steps with the MindSpore "
                           f"reference; {artifact} carries {manifest.sampler_settings.describe()}")
    log(f"end-to-end: MindSpore reference DDPM and the runtime, {images} images, seed {seed} ...")
    with tempfile.TemporaryDirectory(prefix="end_to_end.") as scratch:
        noise, reference, candidate = (Path(scratch) / name for name in ("noise.npz", "reference.npz", "runtime.npz"))
        run_module("export.end_to_end", checkpoint.resolve(), noise, reference, "--seed", seed, "--images", images,
                   what="end-to-end check: the MindSpore reference")
        run_module("runtime.equivalence", artifact.resolve(), noise, candidate, *(["--backend", backend] if backend else []),
                   what="end-to-end check: the runtime")
        with np.load(reference, allow_pickle=False) as ref, np.load(candidate, allow_pickle=False) as out, \
                np.load(noise, allow_pickle=False) as drawn:
            figures = compare_samples(ref["x0"], out["x0"])
            steps = len(drawn["step_noise"]) + 1
    report = EndToEndReport(**figures, images=images, steps=steps, seed=seed)
    log(report.summary())
    if not report.passed:
        raise VerificationFailed(f"the runtime's DDPM samples differ from the MindSpore reference's: {report.summary()}")
    return report


def reference_worker(checkpoint: Path, noise_out: Path, samples_out: Path, seed: int, images: int) -> None:
    """The MindSpore side: load the checkpoint, draw the noise from `seed`, run the tutorial's p_sample_loop."""
    from ..runtime.schedules import ScheduleTables
    from ..train.checkpoint import load_model
    from ..train.diffusion import draw_sampling_noise, reference_sample

    net, source = load_model(checkpoint)
    model, diffusion = source.config.model, source.config.diffusion
    shape = (images, model.channels, model.image_size, model.image_size)
    x_T, step_noise = draw_sampling_noise(seed, shape, diffusion.timesteps)
    tables = ScheduleTables.from_name(diffusion.schedule, diffusion.timesteps)
    np.savez(noise_out, x_T=x_T, step_noise=step_noise)
    np.savez(samples_out, x0=reference_sample(net, tables, x_T, step_noise))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description="The MindSpore reference side.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("noise_out", type=Path)
    parser.add_argument("samples_out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    args = parser.parse_args(argv)
    reference_worker(args.checkpoint, args.noise_out, args.samples_out, args.seed, args.images)


if __name__ == "__main__":
    run_main(main)
