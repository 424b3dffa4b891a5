"""Data readers: IDX (plain, gzip, corrupt), image folders, .npz and the embedded digits."""
import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.train.data import load_images, parse_idx, read_idx, to_model_range


def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 12, 12), dtype=np.uint8)


def test_idx_round_trip_plain_and_gzip(tmp_path, images):
    plain, packed = tmp_path / "train-images-idx3-ubyte", tmp_path / "t10k-images-idx3-ubyte.gz"
    plain.write_bytes(idx_bytes(images))
    packed.write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(read_idx(plain), images)
    assert np.array_equal(read_idx(packed), images)
    assert load_images(str(tmp_path), 12, 1).shape == (7, 12, 12, 1)  # a folder of IDX files -> train-images


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b"\x00\x00\x0d\x03" + b[4:], "bad magic"),
    (lambda b: b"\x01\x00\x08\x03" + b[4:], "bad magic"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b + b"\x00", "truncated or corrupt"),
    (lambda b: b[:2], "too short"),
])
def test_corrupt_idx_is_refused(images, mutate, message):
    with pytest.raises(ToolkitError, match=message):
        parse_idx(mutate(idx_bytes(images)), "x")


def test_image_folder_resizes_crops_and_checks_colour(tmp_path):
    Image.new("L", (20, 10), 200).save(tmp_path / "a.png")
    Image.new("L", (9, 9), 50).save(tmp_path / "b.jpg")
    loaded = load_images(str(tmp_path), 8, 1)
    assert loaded.shape == (2, 8, 8, 1) and loaded.dtype == np.uint8
    Image.new("RGB", (9, 9), (1, 2, 3)).save(tmp_path / "c.png")
    with pytest.raises(ToolkitError, match="colour image"):
        load_images(str(tmp_path), 8, 1)
    assert load_images(str(tmp_path), 8, 3).shape == (3, 8, 8, 3)


def test_npz_and_bad_paths(tmp_path, images):
    np.savez(tmp_path / "d.npz", images=images)
    assert load_images(str(tmp_path / "d.npz"), 12, 1).shape == (7, 12, 12, 1)
    np.savez(tmp_path / "f.npz", images=images.astype(np.float32))
    with pytest.raises(ToolkitError, match="must be uint8"):
        load_images(str(tmp_path / "f.npz"), 12, 1)
    with pytest.raises(ToolkitError, match="not found"):
        load_images(str(tmp_path / "missing"), 12, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ToolkitError, match="no images"):
        load_images(str(tmp_path / "empty"), 12, 1)
    with pytest.raises(ToolkitError, match="channel"):
        load_images(str(tmp_path / "d.npz"), 12, 3)


def test_embedded_digits_are_real_and_scaled():
    digits = load_images("digits", 16, 1)
    assert digits.shape == (1797, 16, 16, 1)
    x = to_model_range(digits)
    assert x.shape == (1797, 1, 16, 16) and x.min() == -1.0 and x.max() == 1.0
