"""`cli.py sample --artifact ...`: the runtime's command, with a progress bar over the steps."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .files import check_output_dir
from .images import save_gif, save_grid, save_npz, to_uint8
from .pipeline import Sampler
from .schedulers import DEFAULT_SPACING


def sample_artifact(artifact: Path, *, backend: Optional[str], scheduler: str, steps: Optional[int], eta: float,
                    n: int, batch: Optional[int], seed: int, out: Path, gif: Optional[Path], npz: Optional[Path],
                    threads: Optional[int], providers: Optional[Sequence[str]], spacing: str = DEFAULT_SPACING,
                    clip_x0: bool = False) -> None:
    """Sample n images from an exported artifact; write the PNG grid (+ GIF of the denoising, + .npz)."""
    from tqdm import tqdm

    for path in (out, gif, npz):
        if path is not None:
            check_output_dir(path)
    sampler = Sampler.load(artifact, backend, batch=batch, threads=threads, providers=providers)
    chosen = sampler.scheduler(scheduler, steps, eta=eta, spacing=spacing, clip_x0=clip_x0)
    frames: List[np.ndarray] = []
    with tqdm(total=len(chosen.timesteps), desc=f"{scheduler} sampling", unit="step") as progress:
        def on_step(index: int, t: int, x: np.ndarray) -> None:
            progress.update()
            if gif is not None:
                frames.append(to_uint8(x))

        images = sampler.sample(n, chosen, seed=seed, callback=on_step)
    written = [save_grid(out, images)]
    if gif is not None:
        written.append(save_gif(gif, frames))
    if npz is not None:
        written.append(save_npz(npz, images))
    print(f"{n} images ({scheduler}, {len(chosen.timesteps)} steps, {sampler.backend.name}) -> "
          + ", ".join(map(str, written)))
