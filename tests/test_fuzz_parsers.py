"""Fuzzing the parsers this toolkit wrote: the IDX reader, the manifest loader and the image-folder loader.

Whatever the bytes, each must return a result or raise ToolkitError; any other exception is a bug.
The suite runs a fixed set of examples (derandomized), so it stays deterministic; set the environment
variable FUZZ_EXAMPLES (e.g. 5000) to search longer, with fresh random examples each run.
"""
from __future__ import annotations

import gzip
import io
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import tiny_config
from ms_ddpm.runtime.backends import Backend
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.manifest import Manifest
from ms_ddpm.runtime.pipeline import Sampler
from ms_ddpm.runtime.schedules import ScheduleTables
from ms_ddpm.train.data import load_images, parse_idx

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 300))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize="FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _ours_or_nothing(call, *args):
    """Run the parser; a ToolkitError is a clean refusal, anything else propagates and fails the test."""
    try:
        return call(*args)
    except ToolkitError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)  # one line, not empty
        return None


# ---- IDX -----------------------------------------------------------------------------------------
def _idx(dims, body: bytes, dtype: int = 0x08, zero: int = 0) -> bytes:
    return struct.pack(">HBB", zero, dtype, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + body


idx_headers = st.builds(_idx, st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 12), min_size=0, max_size=5),
                        st.binary(max_size=600), st.sampled_from([0x08, 0x08, 0x09, 0x0D]), st.sampled_from([0, 0, 1]))


@FUZZ
@given(data=st.binary(max_size=300) | idx_headers)
@example(data=_idx([65536, 65536, 65536, 65536], b""))  # the dims' product wraps to 0 in int64
@example(data=_idx([5, 0, 8], b""))  # zero-height images
def test_idx_reader_accepts_or_refuses_cleanly(tmp_path_factory, data):
    parsed = _ours_or_nothing(parse_idx, data, "fuzz")
    if parsed is not None:
        assert parsed.dtype == np.uint8 and parsed.size == len(data) - 4 - 4 * parsed.ndim
    folder = tmp_path_factory.mktemp("idx")
    for name, content in (("train-images-idx3-ubyte", data), ("train-images-idx3-ubyte.gz", gzip.compress(data))):
        path = folder / name
        path.write_bytes(content)
        images = _ours_or_nothing(load_images, str(path), 8, 1)  # through the whole reader, resizing included
        assert images is None or images.shape[1:] == (8, 8, 1)


@FUZZ
@given(data=st.binary(min_size=1, max_size=200))
@example(data=b"\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 20)  # a gzip header over a broken deflate stream
def test_gzip_wrapped_idx_is_refused_cleanly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("gz") / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + data)
    _ours_or_nothing(load_images, str(path), 8, 1)


# ---- manifests -----------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _valid_manifest() -> dict:
    config = tiny_config()
    image = [1, 8, 8]
    return {
        "format": "onnx", "artifact": "unet.onnx", "artifact_sha256": "0" * 64, "config": config.to_dict(),
        "betas": ScheduleTables.from_name("linear", config.diffusion.timesteps).betas.tolist(),
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", *image]},
                   {"name": "t", "dtype": "int32", "shape": ["batch"]}],
        "outputs": [{"name": "eps", "dtype": "float32", "shape": ["batch", *image]}],
        "batch": {"policy": "dynamic"}, "opset": 11, "source_checkpoint_sha256": "0" * 64,
        "package_version": "0.1.0", "verification": {"skipped": True}, "format_version": 1, "extra": {},
    }


def _paths(value, prefix=()):
    """Every (path, value) inside a JSON value, the root included."""
    yield prefix, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


VALID_PATHS = [path for path, _ in _paths(_valid_manifest())]


@st.composite
def mutated_manifests(draw) -> dict:
    """A valid manifest with one to three places replaced by any JSON value, or deleted."""
    manifest = _valid_manifest()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(VALID_PATHS[1:]))
        parent = manifest
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values | st.integers(-2**70, 2**70) | st.floats(allow_nan=True))
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed or replaced this path
            pass
    return manifest


def _usable(manifest: Manifest) -> None:
    """What a loaded manifest promises: its views work and a Sampler can be built and run on it. (Absurd but
    consistent sizes load; no real model has them, so every backend's signature check refuses the pair.)"""
    sampler = Sampler(Backend("fake", lambda x, t: np.zeros_like(x)), manifest)
    assert sampler.tables.timesteps == manifest.timesteps == manifest.run_config.diffusion.timesteps
    assert manifest.fixed_batch is None or manifest.fixed_batch >= 1
    if np.prod(sampler.image_shape, dtype=float) <= 1e6:
        x = sampler.denoise(sampler.scheduler("ddim", 1), np.zeros((1, *sampler.image_shape), np.float32))
        assert x.shape == (1, *sampler.image_shape)


def test_the_unmutated_manifest_is_valid():
    _usable(Manifest.from_dict(_valid_manifest()))


@FUZZ
@given(data=mutated_manifests() | json_values)
@example(data={**_valid_manifest(), "inputs": [{"name": "x", "dtype": "float32", "shape": 3}] * 2})
@example(data={**_valid_manifest(), "betas": [10**400] * 10})
@example(data={**_valid_manifest(), "artifact": "../../etc/passwd"})
def test_manifest_loader_accepts_or_refuses_cleanly(data):
    manifest = _ours_or_nothing(Manifest.from_dict, data)
    if manifest is not None:
        _usable(manifest)


@FUZZ
@given(text=st.binary(max_size=200).map(lambda b: b.decode("latin-1")) | st.just("[" * 100_000))
def test_manifest_files_of_any_text_are_refused_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("manifest") / "unet.onnx.json"
    path.write_text(text, encoding="utf-8")
    _ours_or_nothing(Manifest.load, path)



# ---- image folders -------------------------------------------------------------------------------
def _png(width: int = 6, height: int = 5, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims another size (the header CRC fixed up, so the decoder believes it)."""
    data = bytearray(_png())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@st.composite
def damaged_images(draw) -> bytes:
    """Random bytes, or a real PNG/BMP/GIF/TIFF with bytes flipped, cut or inserted."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    buffer = io.BytesIO()
    kind = draw(st.sampled_from(["PNG", "BMP", "GIF", "TIFF"]))
    Image.new(draw(st.sampled_from(["L", "RGB", "P", "I"])) if kind == "TIFF" else "L", (7, 5), 99).save(buffer, format=kind)
    data = bytearray(buffer.getvalue())
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[position:]
            if not data:
                break
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")  # PIL on corrupt files
@FUZZ
@given(data=damaged_images(), channels=st.sampled_from([1, 3]))
@example(data=_png_claiming(10**6, 10**6), channels=1)  # a decompression bomb by its header
@example(data=_png_claiming(0, 5), channels=1)
def test_image_folder_loader_accepts_or_refuses_cleanly(tmp_path_factory, data, channels):
    folder = tmp_path_factory.mktemp("images")
    (folder / "ok.png").write_bytes(_png())
    (folder / "fuzzed.png").write_bytes(data)
    images = _ours_or_nothing(load_images, str(folder), 8, channels)
    assert images is None or images.shape == (2, 8, 8, channels)


@pytest.mark.parametrize("size", [(1, 300), (300, 1), (1, 1)])
def test_extreme_aspect_ratios_still_load(tmp_path, size):
    (tmp_path / "thin.png").write_bytes(_png(*size))
    assert load_images(str(tmp_path), 8, 1).shape == (1, 8, 8, 1)


