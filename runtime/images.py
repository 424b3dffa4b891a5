"""Turning samples into files: a grid picture (PNG, JPEG or WebP by the file's suffix), the denoising GIF
(as in the tutorial) and .npz. Atomic writes; output names are checked before any slow work."""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import ToolkitError
from .files import atomic_path, check_output_dir

# Grid formats by suffix, with the options that keep them faithful (JPEG is lossy by nature).
IMAGE_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
                 ".webp": ("WEBP", {"lossless": True})}


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


def grid_image(array: np.ndarray, scale: int | None, image_size: int) -> Image.Image:
    """A mosaic as a PIL image, enlarged (nearest) so that small images stay visible: 8x8 digits x6."""
    scale = scale if scale is not None else max(1, 48 // image_size)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def image_format(path: str | Path, option: str = "--out") -> tuple[str, dict]:
    """Pillow's format name and save options for a grid file, from its suffix; refuses other suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ToolkitError(f"{option} {path}: {f'unknown image suffix {suffix!r}' if suffix else 'no file suffix'}; "
                           f"name a {', '.join(IMAGE_FORMATS)} file")
    return IMAGE_FORMATS[suffix]


def save_grid(path: str | Path, images: np.ndarray, scale: int | None = None, columns: int | None = None) -> Path:
    """The images as one mosaic, in the format the suffix names (PNG, JPEG or WebP)."""
    name, options = image_format(path)
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        grid_image(make_grid(images, columns), scale, images.shape[1]).save(tmp, format=name, **options)
    return Path(path)


def save_gif(path: str | Path, frames: Sequence[np.ndarray], scale: int | None = None, duration_ms: int = 40,
             max_frames: int = 100) -> Path:
    """Each frame is an (N, H, W, C) uint8 batch shown as a grid; the last frame is held longer."""
    if not frames:
        raise ToolkitError("no frames to write to the GIF")
    stride = max(1, math.ceil(len(frames) / max_frames))
    chosen = list(frames[::stride])
    if chosen[-1] is not frames[-1]:
        chosen.append(frames[-1])
    pictures = [grid_image(make_grid(frame), scale, frame.shape[1]) for frame in chosen]
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


def check_outputs(out: Path, gif: Path | None = None, npz: Path | None = None) -> None:
    """Fail before any slow work if the outputs of `save_samples` cannot be written as named: a grid with an
    image suffix, a .gif, no two options naming one file, each in an existing, writable folder."""
    if Path(out).is_dir():
        raise ToolkitError(f"--out {out} is a folder: name the picture to write, e.g. {Path(out) / 'samples.png'}")
    image_format(out)
    if gif is not None and Path(gif).suffix.lower() != ".gif":
        raise ToolkitError(f"--gif {gif}: the denoising animation is a GIF; name a .gif file")
    named = {option: Path(path) for option, path in (("--out", out), ("--gif", gif), ("--npz", npz)) if path is not None}
    for (first, path), (second, other) in itertools.combinations(named.items(), 2):
        if path.resolve() == other.resolve():
            raise ToolkitError(f"{first} and {second} name the same file ({path}): give each output its own name")
    for path in named.values():
        check_output_dir(path)


def save_samples(out: Path, images: np.ndarray, gif: Path | None = None, frames: Sequence[np.ndarray] = (),
                 npz: Path | None = None) -> list[Path]:
    """Write the PNG grid, plus the denoising GIF and the .npz when asked; return the paths written."""
    written = [save_grid(out, images)]
    if gif is not None:
        written.append(save_gif(gif, frames))
    if npz is not None:
        written.append(save_npz(npz, images))
    return written
