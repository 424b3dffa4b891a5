"""`cli.py sample --artifact ...`: the runtime's command, with a progress bar over the steps."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .images import check_outputs, save_samples, to_uint8
from .pipeline import Sampler
from .schedulers import DEFAULT_SPACING


def sample_artifact(artifact: Path, *, backend: Optional[str], scheduler: str, steps: Optional[int], eta: float,
                    n: int, batch: Optional[int], seed: int, out: Path, gif: Optional[Path], npz: Optional[Path],
                    threads: Optional[int], providers: Optional[Sequence[str]], spacing: str = DEFAULT_SPACING,
                    clip_x0: bool = False) -> None:
    """Sample n images from an exported artifact; write the PNG grid (+ GIF of the denoising, + .npz)."""
    from tqdm import tqdm

    check_outputs(out, gif, npz)
    sampler = Sampler.load(artifact, backend, batch=batch, threads=threads, providers=providers)
    chosen = sampler.scheduler(scheduler, steps, eta=eta, spacing=spacing, clip_x0=clip_x0)
    frames: List[np.ndarray] = []
    with tqdm(total=len(chosen.timesteps), desc=f"{scheduler} sampling", unit="step") as progress:
        def on_step(index: int, t: int, x: np.ndarray) -> None:
            progress.update()
            if gif is not None:
                frames.append(to_uint8(x))

        images = sampler.sample(n, chosen, seed=seed, callback=on_step)
    written = save_samples(out, images, gif, frames, npz)
    print(f"{n} images ({scheduler}, {len(chosen.timesteps)} steps, {sampler.backend.name}) -> "
          + ", ".join(map(str, written)))
