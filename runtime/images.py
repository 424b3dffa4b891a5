"""Turning samples into files: PNG grid, denoising GIF (as in the tutorial) and .npz. Atomic writes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import ToolkitError
from .files import atomic_path


def to_uint8(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats on the [-1, 1] scale -> (N, H, W, C) uint8. Refuses non-finite values."""
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ToolkitError(f"samples contain {bad} NaN/Inf values: the model or its weights are broken")
    images = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return images.transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows*H', cols*W', C) uint8 mosaic."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), dtype=np.uint8)
    for index, image in enumerate(images):
        row, col = divmod(index, columns)
        top, left = pad + row * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid


def _pil(array: np.ndarray, scale: int) -> Image.Image:
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def save_grid(path: str | Path, images: np.ndarray, scale: int = 2, columns: int | None = None) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        _pil(make_grid(images, columns), scale).save(tmp, format="PNG")
    return Path(path)


def save_gif(path: str | Path, frames: Sequence[np.ndarray], scale: int = 2, duration_ms: int = 40,
             max_frames: int = 100) -> Path:
    """Each frame is an (N, H, W, C) uint8 batch shown as a grid; the last frame is held longer."""
    if not frames:
        raise ToolkitError("no frames to write to the GIF")
    stride = max(1, math.ceil(len(frames) / max_frames))
    chosen = list(frames[::stride])
    if chosen[-1] is not frames[-1]:
        chosen.append(frames[-1])
    pictures = [_pil(make_grid(frame), scale) for frame in chosen]
    durations = [duration_ms] * (len(pictures) - 1) + [1500]
    with atomic_path(path, suffix=".gif") as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return Path(path)


def save_npz(path: str | Path, images: np.ndarray) -> Path:
    """Save (N, H, W, C) uint8 images under the key `images` (read back with allow_pickle=False)."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=images)
    return Path(path)
