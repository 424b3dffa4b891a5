"""Training data as uint8 arrays (N, H, W, C): IDX files (Fashion-MNIST), image folders, .npz, and the
embedded default, scikit-learn's bundled handwritten digits. Nothing is ever downloaded.

Every reader fails with a one-line ToolkitError that names the file.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

from ..runtime.errors import ToolkitError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IDX_UBYTE = 0x08
EMBEDDED = "digits"


# ---- IDX (the tutorial's Fashion-MNIST files) ------------------------------------------------------
def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """Parse an IDX file body: magic 0x0000 0x08 <ndim>, big-endian uint32 dims, then uint8 values."""
    if len(data) < 4:
        raise ToolkitError(f"not an IDX file (too short): {source}")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != IDX_UBYTE or not 1 <= ndim <= 4:
        raise ToolkitError(f"not an unsigned-byte IDX file (bad magic number 0x{data[:4].hex()}): {source}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ToolkitError(f"truncated IDX header: {source}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if 0 in dims:
        raise ToolkitError(f"IDX header {list(dims)} describes no data: {source}")
    expected = math.prod(dims)  # Python ints: numpy's int64 product can wrap around to a small number
    if len(data) - header != expected:
        raise ToolkitError(f"IDX body has {len(data) - header} bytes but its header {list(dims)} needs {expected}"
                           f" (truncated or corrupt): {source}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """Read a plain or gzip-compressed IDX file."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; zlib.error: a broken stream
        raise ToolkitError(f"cannot read IDX file {path}: {exc}") from exc
    return parse_idx(raw, str(path))


def _is_idx(path: Path) -> bool:
    return "idx" in path.name or path.name.endswith("-ubyte") or path.name.endswith("-ubyte.gz")


# ---- folders, .npz, embedded digits ----------------------------------------------------------------
def read_image_folder(folder: Path, image_size: int, channels: int) -> np.ndarray:
    """Every image in `folder` (recursively): resized (shorter side), centre-cropped, grey or RGB."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ToolkitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder: {folder}")
    return np.stack([_load_image(path, image_size, channels) for path in files])


def _load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            if channels == 1 and not grey:
                raise ToolkitError(f"colour image {path} for a 1-channel model (use --channels 3, or convert the folder to grey)")
            image = image.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL: unidentified/truncated (OSError), bad sizes
        raise ToolkitError(f"cannot read image {path}: {exc}") from exc
    return resize_and_crop(image, image_size).reshape(image_size, image_size, channels)


def resize_and_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (bilinear) and centre-crop, as the tutorial's transforms do."""
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def read_npz(path: Path) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, C) under the key `images` (or the file's only array)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ToolkitError(f".npz has no 'images' array (found {keys}): {path}")
            images = archive[key]
    except (OSError, ValueError, EOFError) as exc:
        raise ToolkitError(f"cannot read .npz {path}: {exc}") from exc
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ToolkitError(f".npz images must be uint8 (N, H, W[, C]), got {images.dtype} {images.shape}: {path}")
    return images


def load_digits_images() -> np.ndarray:
    """scikit-learn's bundled 1,797 handwritten 8x8 digits (values 0..16), as uint8 0..255 (N, 8, 8)."""
    from sklearn.datasets import load_digits

    return np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)


# ---- the one entry point ----------------------------------------------------------------------------
def load_images(spec: str, image_size: int, channels: int) -> np.ndarray:
    """Load training images as uint8 (N, image_size, image_size, channels).

    `spec` is "digits" (embedded default), an IDX file, a folder of images (or of IDX files: the
    training images `train-images-idx3-ubyte[.gz]` are used), or an .npz.
    """
    if spec == EMBEDDED:
        return _fit(load_digits_images(), image_size, channels, EMBEDDED)
    path = Path(spec)
    if not path.exists():
        raise ToolkitError(f"data path not found: {path}")
    if path.is_dir():
        idx_files = sorted(p for p in path.iterdir() if p.name.startswith("train-images") and _is_idx(p))
        if idx_files:
            return _fit(read_idx(idx_files[0]), image_size, channels, str(idx_files[0]))
        return read_image_folder(path, image_size, channels)
    if path.suffix == ".npz":
        return _fit(read_npz(path), image_size, channels, str(path))
    if _is_idx(path):
        return _fit(read_idx(path), image_size, channels, str(path))
    raise ToolkitError(f"unrecognised data file (expected an IDX file, .npz or a folder): {path}")


def load_labeled_images(spec: str, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, image_size, image_size, 1), int64 labels): the embedded digits, or a folder with
    train-images and train-labels IDX files (Fashion-MNIST's layout)."""
    if spec == EMBEDDED:
        from sklearn.datasets import load_digits

        return load_images(spec, image_size, 1), load_digits().target.astype(np.int64)
    labels = sorted(Path(spec).glob("train-labels*")) if Path(spec).is_dir() else []
    if not labels:
        raise ToolkitError(f"labelled data is 'digits' or a folder with train-images and train-labels IDX files, "
                           f"got {spec}")
    images, y = load_images(spec, image_size, 1), read_idx(labels[0])
    if len(images) != len(y):
        raise ToolkitError(f"{spec} has {len(images)} training images but {labels[0]} has {len(y)} labels")
    return images, y.astype(np.int64)


def _fit(images: np.ndarray, image_size: int, channels: int, source: str) -> np.ndarray:
    """Bring (N, H, W[, C]) uint8 arrays to the model's size and channel count."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or 0 in images.shape[:3]:
        raise ToolkitError(f"expected a non-empty stack of images, got shape {images.shape}: {source}")
    if images.shape[-1] not in (1, 3):
        raise ToolkitError(f"images must have 1 or 3 channels, got {images.shape[-1]}: {source}")
    if images.shape[-1] != channels:
        raise ToolkitError(f"data has {images.shape[-1]} channel(s) but the model has {channels} "
                           f"(set --channels {images.shape[-1]}): {source}")
    if images.shape[1:3] != (image_size, image_size):
        mode = "L" if channels == 1 else "RGB"
        images = np.stack([
            resize_and_crop(Image.fromarray(img[..., 0] if channels == 1 else img, mode), image_size)
            .reshape(image_size, image_size, channels)
            for img in images
        ])
    return images


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) on [-1, 1], as the tutorial's transforms do."""
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()
