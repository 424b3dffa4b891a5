"""The `mslite` runtime backend: eps = backend(x_t, t) on a MindSpore Lite cloud MindIR model."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from ..errors import ToolkitError
from . import engine
from .convert import SUFFIX

if TYPE_CHECKING:
    from ..manifest import Manifest


class MsliteBackend:
    """Runs the U-Net with MindSpore Lite (official API if importable, else the native bridge).

    `x` is float32 (B, C, H, W), `t` integer (B,); returns float32 eps (B, C, H, W). A model with a
    dynamic batch is resized to each new B; a model with a fixed batch N is run in chunks of N
    (the last chunk padded by repeating its final sample). The process must not import MindSpore.
    """

    name = "mslite"

    def __init__(self, model_path: str | os.PathLike, threads: Optional[int] = None, device: str = "cpu"):
        path = Path(model_path)
        if not path.is_file():
            raise ToolkitError(f"MindSpore Lite model not found: {path}")
        if path.suffix != SUFFIX:
            raise ToolkitError(f"{path}: not a MindSpore Lite model (expected a {SUFFIX} file from "
                               f"`python -m runtime.mslite.convert`)")
        self._model = engine.open_model(path, threads, device)
        self._x, self._t = _find_inputs(self._model.input_shapes, self._model.input_dtypes, path)
        x_shape = self._model.input_shapes[self._x]
        self.sample_shape: Tuple[int, ...] = tuple(x_shape[1:])
        self.fixed_batch: Optional[int] = x_shape[0] if x_shape[0] > 0 else None
        self.description = engine.describe()

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        x, t = self._checked(x, t)
        step = self.fixed_batch or len(x)
        chunks = [self._run(x[i:i + step], t[i:i + step], step) for i in range(0, len(x), step)]
        return np.concatenate(chunks)

    def _checked(self, x: np.ndarray, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        x, t = np.asarray(x), np.asarray(t)
        if x.ndim != 4 or x.shape[1:] != self.sample_shape or len(x) == 0:
            raise ToolkitError(f"x must have shape (B, {', '.join(map(str, self.sample_shape))}) with B >= 1, "
                               f"got {x.shape}")
        if t.shape != (len(x),) or not np.issubdtype(t.dtype, np.integer):
            raise ToolkitError(f"t must be integer timesteps of shape ({len(x)},), got {t.dtype} {t.shape}")
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(t, dtype=np.int32)

    def _run(self, x: np.ndarray, t: np.ndarray, batch: int) -> np.ndarray:
        """One Lite call on exactly `batch` samples (padding a short final chunk)."""
        count = len(x)
        if count < batch:
            x = np.concatenate([x, np.repeat(x[-1:], batch - count, axis=0)])
            t = np.concatenate([t, np.repeat(t[-1:], batch - count)])
        self._resize(batch)
        arrays = [x, t] if self._x < self._t else [t, x]  # in the model's input order
        return self._model.predict(arrays)[:count]

    def _resize(self, batch: int) -> None:
        shapes = self._model.input_shapes
        if shapes[self._x][0] != batch:
            new = [[batch, *shape[1:]] for shape in shapes]
            self._model.resize(new)


def open_mslite(artifact: Path, manifest: "Manifest", *, threads: Optional[int] = None,
                providers: Optional[Sequence[str]] = None) -> MsliteBackend:
    """The factory runtime.backends registers for `mslite` (`providers` is onnxruntime's; unused here)."""
    backend = MsliteBackend(artifact, threads=threads)
    x_spec = manifest.inputs[0].shape
    if backend.sample_shape != tuple(x_spec[1:]) or backend.fixed_batch != manifest.fixed_batch:
        raise ToolkitError(f"{artifact} does not match its manifest: the model takes x of shape "
                           f"{[backend.fixed_batch or 'batch', *backend.sample_shape]}, the manifest says {x_spec}")
    return backend


def _find_inputs(shapes, dtypes, path: Path) -> Tuple[int, int]:
    """Indices of x (rank 4, float32) and t (rank 1, integer) among the model's two inputs."""
    ranks = [len(shape) for shape in shapes]
    if sorted(ranks) != [1, 4]:
        raise ToolkitError(f"{path}: expected a U-Net with inputs x (B, C, H, W) and t (B,), found shapes {shapes}")
    x, t = ranks.index(4), ranks.index(1)
    if dtypes[x] != "float32" or dtypes[t] != "int32":
        raise ToolkitError(f"{path}: expected float32 x and int32 t, found {dtypes[x]} and {dtypes[t]}")
    return x, t
