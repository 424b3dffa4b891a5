"""The sampling pipeline: an exported U-Net (backend) + a scheduler, in one visible loop.

    sampler = Sampler.load("unet.onnx")
    images = sampler.sample(16, scheduler="ddim", steps=50, seed=0)   # (16, H, W, C) uint8
    save_grid("grid.png", images)

Noise comes from `numpy.random.default_rng(seed)`: first x_T, then one z per stochastic step in loop
order, each of shape (n, C, H, W) float32. For DDPM with all T steps this is exactly
train/diffusion.py's `draw_sampling_noise`, so the runtime and the MindSpore reference sampler
agree for one seed. `denoise` also takes x_T and the step noise from outside.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from .backends import Backend, backend_for_format, open_backend
from .errors import ToolkitError
from .files import sha256_file
from .images import to_uint8
from .manifest import Manifest, manifest_path_for
from .schedulers import DEFAULT_SPACING, Scheduler, make_scheduler

StepCallback = Callable[[int, int, np.ndarray], None]  # (step index, timestep, x after the step)


def load_artifact(artifact: Union[str, Path]) -> Tuple[Path, Manifest]:
    """The artifact and its manifest (`unet.onnx` + `unet.onnx.json`), checked against each other."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ToolkitError(f"artifact not found: {artifact}")
    manifest = Manifest.load(manifest_path_for(artifact))
    if sha256_file(artifact) != manifest.artifact_sha256:
        raise ToolkitError(f"artifact does not match its manifest (sha256 differs): {artifact}")
    return artifact, manifest


class Sampler:
    """An exported eps-model and its beta schedule, ready to sample images."""

    def __init__(self, backend: Backend, manifest: Manifest):
        self.backend = backend
        self.manifest = manifest
        self.tables = manifest.tables()
        self.image_shape = (manifest.channels, manifest.image_size, manifest.image_size)
        self.t_dtype = np.dtype(manifest.inputs[1].dtype)

    @classmethod
    def load(cls, artifact: Union[str, Path], backend: Optional[str] = None, *, batch: Optional[int] = None,
             threads: Optional[int] = None, providers: Optional[Sequence[str]] = None) -> "Sampler":
        """Open an artifact; `backend` defaults to the one for its format (onnx -> onnxruntime)."""
        path, manifest = load_artifact(artifact)
        backend = backend or backend_for_format(manifest.format)
        return cls(open_backend(backend, path, manifest, batch=batch, threads=threads, providers=providers), manifest)

    def scheduler(self, name: str = "ddpm", steps: Optional[int] = None, *, eta: float = 0.0,
                  spacing: str = DEFAULT_SPACING, clip_x0: bool = False) -> Scheduler:
        """A scheduler on this model's schedule (default steps: T for ddpm, 50 for ddim, 20 for dpmpp)."""
        return make_scheduler(name, self.tables, steps, eta=eta, spacing=spacing, clip_x0=clip_x0)

    def sample(self, n: int, scheduler: Union[str, Scheduler] = "ddpm", steps: Optional[int] = None, *,
               seed: Union[int, np.random.Generator] = 0, callback: Optional[StepCallback] = None,
               eta: float = 0.0, spacing: str = DEFAULT_SPACING, clip_x0: bool = False) -> np.ndarray:
        """n images as (n, H, W, C) uint8. `scheduler` is a name (with steps/eta/spacing/clip_x0) or a Scheduler."""
        if n < 1:
            raise ToolkitError(f"the number of images must be >= 1, got {n}")
        if isinstance(scheduler, str):
            scheduler = self.scheduler(scheduler, steps, eta=eta, spacing=spacing, clip_x0=clip_x0)
        x_T, step_noise = self.draw_noise(n, scheduler.noise_steps, seed)
        return to_uint8(self.denoise(scheduler, x_T, step_noise, callback))

    def draw_noise(self, n: int, noise_steps: int, seed: Union[int, np.random.Generator] = 0
                   ) -> Tuple[np.ndarray, Iterator[np.ndarray]]:
        """x_T now, then `noise_steps` z drawn lazily (same values as one (noise_steps, n, C, H, W) draw)."""
        rng = np.random.default_rng(seed)
        shape = (n, *self.image_shape)
        x_T = rng.standard_normal(shape, dtype=np.float32)
        return x_T, (rng.standard_normal(shape, dtype=np.float32) for _ in range(noise_steps))

    def denoise(self, scheduler: Scheduler, x_T: np.ndarray, step_noise: Iterable[np.ndarray] = (),
                callback: Optional[StepCallback] = None) -> np.ndarray:
        """The reverse-diffusion loop from x_T; returns x_0 as float32 on the [-1, 1] scale (unclipped).

        `step_noise` holds one z per stochastic step (`scheduler.noise_steps` of them), in loop order.
        """
        x = np.asarray(x_T, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.image_shape:
            raise ValueError(f"x_T must have shape (n, {', '.join(map(str, self.image_shape))}), got {x.shape}")
        scheduler = scheduler.start()  # this run's own copy: nothing carries over from, or into, other runs
        noise = iter(step_noise)
        for index, t in enumerate(scheduler.timesteps):
            eps = self.backend(x, np.full(len(x), t, dtype=self.t_dtype))
            z = _next_noise(noise, index) if index < scheduler.noise_steps else None
            x = scheduler.step(eps, int(t), x, z)
            if callback is not None:
                callback(index, int(t), x)
        if next(noise, None) is not None:
            raise ValueError(f"got more step noise than the {scheduler.noise_steps} stochastic steps")
        return x


def _next_noise(noise: Iterator[np.ndarray], index: int) -> np.ndarray:
    z = next(noise, None)
    if z is None:
        raise ValueError(f"ran out of step noise at step {index}")
    return np.asarray(z, dtype=np.float32)
