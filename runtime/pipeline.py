"""The sampling pipeline: an exported model + a scheduler, in one visible loop.

    sampler = Sampler.load("unet.onnx")
    images = sampler.sample(16, scheduler="ddim", steps=50, seed=0)   # (16, H, W, C) uint8
    save_grid("grid.png", images)

Two kinds of artifact run through the same loop, `x, x0, state = step(x, i, z, state)`:
- a U-Net (`unet.onnx`): each step calls the backend for eps, then applies the scheduler's step in numpy
  (`runtime.schedulers.apply_step`); any scheduler, any number of steps;
- a sampler-step model (`unet.sampler.onnx`, `export --sampler`): the U-Net and one step of the scheduler
  it carries run in one backend call; asking it for another scheduler is an error naming what it carries.

Noise (`draw_noise`) is the portable generator of runtime/noise.py (docs/noise.md), the same on every
host: `NoiseStream(seed)` gives x_T first, then one z per stochastic step in loop order, each of shape
(n, C, H, W) float32. The MindSpore reference sampler (train/diffusion.py) draws its noise here too, so
the runtime and the reference agree for one seed. `denoise` also takes x_T and the step noise from outside.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from .backends import Backend, backend_for_format, open_backend
from .errors import ToolkitError
from .images import to_uint8
from .manifest import Manifest, SamplerSettings, manifest_path_for
from .noise import NoiseStream
from .schedulers import DEFAULT_SCHEDULER, DEFAULT_SPACING, Scheduler, StepTable, apply_step

StepCallback = Callable[[int, int, np.ndarray], None]  # (step index, timestep, x after the step)
State = Union[np.ndarray, Tuple[np.ndarray, ...]]  # a step model's (K, N, C, H, W) array, or apply_step's x0 history
Step = Callable[[np.ndarray, int, Optional[np.ndarray], State], Tuple[np.ndarray, np.ndarray, State]]


def load_artifact(artifact: Union[str, Path]) -> Tuple[Path, Manifest]:
    """The artifact and its manifest (`unet.onnx` + `unet.onnx.json`), checked against each other."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ToolkitError(f"artifact not found: {artifact}")
    manifest = Manifest.load(manifest_path_for(artifact))
    if not manifest.check_artifact(artifact)[1]:
        raise ToolkitError(f"artifact does not match its manifest (sha256 differs): {artifact}")
    return artifact, manifest


def load_step_artifact(artifact: Union[str, Path], fmt: str, host: str) -> Tuple[Path, Manifest]:
    """A sampler-step artifact of format `fmt` that matches its manifest, for `host` (the page, the C++ host)."""
    artifact, manifest = load_artifact(artifact)
    if manifest.sampler is None:
        raise ToolkitError(f"{artifact} is not a sampler artifact (a plain U-Net: its manifest has no sampler section); "
                           f"export one with `ms-ddpm export --format {fmt} --sampler NAME`")
    if manifest.format != fmt:
        raise ToolkitError(f"{artifact}: {host} runs {fmt} sampler-step artifacts, not {manifest.format} "
                           f"(export one with `ms-ddpm export --format {fmt} --sampler NAME`)")
    return artifact, manifest


def draw_noise(shape: Sequence[int], noise_steps: int, seed: int = 0) -> Tuple[np.ndarray, Iterator[np.ndarray]]:
    """x_T of `shape` now, then `noise_steps` z of `shape` drawn lazily: the seed's NoiseStream, in loop order."""
    stream = NoiseStream(seed)
    x_T = stream.draw(shape)
    return x_T, (stream.draw(shape) for _ in range(noise_steps))


class Sampler:
    """An exported eps-model (or sampler-step model) and its beta schedule, ready to sample images."""

    def __init__(self, backend: Backend, manifest: Manifest):
        self.backend = backend
        self.manifest = manifest
        self.tables = manifest.tables()
        self.image_shape = (manifest.channels, manifest.image_size, manifest.image_size)
        self.carries: Optional[SamplerSettings] = manifest.sampler_settings  # a step model's scheduler; None: a U-Net
        self.index_dtype = np.dtype(manifest.inputs[1].dtype)  # the U-Net's t, or the step model's i

    @classmethod
    def load(cls, artifact: Union[str, Path], backend: Optional[str] = None, *, batch: Optional[int] = None,
             threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
             precision: Optional[str] = None) -> "Sampler":
        """Open an artifact; `backend` defaults to the one for its format (onnx -> onnxruntime), `precision` to
        fp32 (bf16: the openvino backend, with its own end-to-end threshold, runtime/equivalence.py)."""
        path, manifest = load_artifact(artifact)
        backend = backend or backend_for_format(manifest.format)
        return cls(open_backend(backend, path, manifest, batch=batch, threads=threads, providers=providers,
                                precision=precision), manifest)

    def settings(self, name: Optional[str] = None, steps: Optional[int] = None, *, eta: Optional[float] = None,
                 spacing: Optional[str] = None, clip_x0: Optional[bool] = None) -> SamplerSettings:
        """The scheduler settings asked for (None: the default). A U-Net takes any (default: DEFAULT_SCHEDULER,
        dpmpp-sde, with `DEFAULT_STEPS`; eta 0, trailing spacing, no clipping); a sampler-step model only the ones
        it carries, which are also its defaults."""
        if self.carries is None:
            return SamplerSettings(name or DEFAULT_SCHEDULER, steps, eta or 0.0, spacing or DEFAULT_SPACING, bool(clip_x0))
        asked = {"name": name, "steps": steps, "eta": eta, "spacing": spacing, "clip_x0": clip_x0}
        differing = [f"{key} {value!r}" for key, value in asked.items()
                     if value is not None and value != getattr(self.carries, key)]
        if differing:
            raise ToolkitError(f"{self.manifest.artifact} carries its sampler ({self.carries.describe()}); it cannot "
                               f"sample with {', '.join(differing)}: export another with --sampler, or sample "
                               "from the plain U-Net artifact")
        return self.carries

    def scheduler(self, name: Optional[str] = None, steps: Optional[int] = None, *, eta: Optional[float] = None,
                  spacing: Optional[str] = None, clip_x0: Optional[bool] = None) -> Scheduler:
        """A scheduler on this model's schedule, with `settings(...)`."""
        return self.settings(name, steps, eta=eta, spacing=spacing, clip_x0=clip_x0).scheduler(self.tables)

    def sample(self, n: int, scheduler: Union[str, Scheduler, None] = None, steps: Optional[int] = None, *,
               seed: int = 0, callback: Optional[StepCallback] = None, eta: Optional[float] = None,
               spacing: Optional[str] = None, clip_x0: Optional[bool] = None) -> np.ndarray:
        """n images as (n, H, W, C) uint8. `scheduler` is a name (with steps/eta/spacing/clip_x0), a Scheduler,
        or None (see `scheduler`)."""
        if n < 1:
            raise ToolkitError(f"the number of images must be >= 1, got {n}")
        if not isinstance(scheduler, Scheduler):
            scheduler = self.scheduler(scheduler, steps, eta=eta, spacing=spacing, clip_x0=clip_x0)
        x_T, step_noise = self.draw_noise(n, scheduler.noise_steps, seed)
        return to_uint8(self.denoise(scheduler, x_T, step_noise, callback))

    def draw_noise(self, n: int, noise_steps: int, seed: int = 0) -> Tuple[np.ndarray, Iterator[np.ndarray]]:
        """`draw_noise` for n images of this model."""
        return draw_noise((n, *self.image_shape), noise_steps, seed)

    def denoise(self, scheduler: Scheduler, x_T: np.ndarray, step_noise: Iterable[np.ndarray] = (),
                callback: Optional[StepCallback] = None) -> np.ndarray:
        """The reverse-diffusion loop from x_T; returns x_0 as float32 on the [-1, 1] scale (unclipped).

        `step_noise` holds one z per stochastic step (`scheduler.noise_steps` of them), in loop order.
        """
        x = np.asarray(x_T, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.image_shape:
            raise ValueError(f"x_T must have shape (n, {', '.join(map(str, self.image_shape))}), got {x.shape}")
        table = scheduler.table()
        step, state = self._step(table, len(x))
        noise = iter(step_noise)
        for i, t in enumerate(table.timesteps):
            z = _next_noise(noise, i) if i < table.noise_steps else None
            x, x0, state = step(x, i, z, state)
            if callback is not None:
                callback(i, int(t), x)
        if next(noise, None) is not None:
            raise ValueError(f"got more step noise than the {table.noise_steps} stochastic steps")
        return x

    def _step(self, table: StepTable, n: int) -> Tuple[Step, State]:
        """This artifact's step function for `table`, and its state before the first step."""
        if self.carries is None:
            return self._host_step(table), ()
        carried = self.carries.scheduler(self.tables).table()
        if not (np.array_equal(table.timesteps, carried.timesteps) and np.array_equal(table.weights, carried.weights)
                and table.clip_x0 == carried.clip_x0):
            raise ToolkitError(f"{self.manifest.artifact} carries its sampler ({self.carries.describe()}); "
                               "the scheduler given is another")
        state_shape = self.manifest.sampler["state_shape"]
        return self._graph_step, np.zeros((state_shape[0], n, *self.image_shape), np.float32)

    def _host_step(self, table: StepTable) -> Step:
        """A U-Net artifact's step: eps from the backend, then the scheduler's step in numpy."""
        def step(x: np.ndarray, i: int, z: Optional[np.ndarray], history: State) -> Tuple[np.ndarray, np.ndarray, State]:
            eps = self.backend(x, np.full(len(x), table.timesteps[i], dtype=self.index_dtype))
            return apply_step(table, i, x, eps, history, z)

        return step

    def _graph_step(self, x: np.ndarray, i: int, z: Optional[np.ndarray], state: State
                    ) -> Tuple[np.ndarray, np.ndarray, State]:
        """A sampler-step artifact's step: the U-Net and the scheduler step in one call (z is zeros where none)."""
        return self.backend(x, np.array([i], self.index_dtype), np.zeros_like(x) if z is None else z, state)


def _next_noise(noise: Iterator[np.ndarray], index: int) -> np.ndarray:
    z = next(noise, None)
    if z is None:
        raise ValueError(f"ran out of step noise at step {index}")
    return np.asarray(z, dtype=np.float32)
