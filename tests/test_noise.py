"""The portable noise generator (docs/noise.md): Philox known answers, Python == C++ == JavaScript on the
same seeds, offsets inside a block, streaming, Gaussian statistics, bad seeds, and the doc's test vectors."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.noise import NoiseStream, block_words, normals, philox4x32

REPO = Path(__file__).resolve().parents[1]
CPP = REPO / "runtime" / "hosts" / "cpp"
WEB = REPO / "runtime" / "hosts" / "web"
SEEDS = [0, 1, 12345, 2**40 + 7]
MILLION = 10**6

# Random123's kat_vectors for philox4x32-10: counter (4 words), key (2 words) -> output (4 words).
KAT = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def run(*command) -> str:
    return subprocess.run([str(c) for c in command], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def cpp_dump(tmp_path_factory) -> Path:
    """noise_dump.cpp built with g++ -O2 -std=c++17."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: cannot build the C++ host's noise_dump")
    binary = tmp_path_factory.mktemp("cpp") / "noise_dump"
    run("g++", "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", CPP / "noise_dump.cpp", "-o", binary)
    return binary


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed: cannot run the web host's noise.mjs")
    return path


@pytest.fixture(params=["cpp", "js"])
def host(request) -> list:
    """The command line of a host's noise_dump: the C++ one and the JavaScript one."""
    if request.param == "cpp":
        return [request.getfixturevalue("cpp_dump")]
    return [request.getfixturevalue("node"), WEB / "noise_dump.mjs"]


def dump(host: list, folder: Path, mode: str, seed: int, count: int, *extra) -> np.ndarray:
    """What `noise_dump mode seed count FILE [extra]` writes: uint32 words or float32 normals."""
    out = folder / f"{mode}-{seed}-{count}.bin"
    run(*host, mode, seed, count, out, *extra)
    return np.fromfile(out, dtype="<u4" if mode == "words" else "<f4")


def kat_words(text: str) -> list:
    return [int(word, 16) for word in text.split()]


# ---- Philox4x32-10 known answers ---------------------------------------------------------------------
@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_known_answers_in_python(counter, key, expected):
    out = philox4x32(np.array([kat_words(counter)], dtype=np.uint32), tuple(kat_words(key)))
    assert out.dtype == np.uint32 and out.tolist() == [kat_words(expected)]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_known_answers_in_hosts(host, counter, key, expected):
    assert run(*host, "philox", *counter.split(), *key.split()).split() == expected.split()


# ---- Python == C++ == JavaScript ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS + [2**64 - 1])
def test_hosts_give_python_words_bitwise(host, tmp_path, seed):
    words = dump(host, tmp_path, "words", seed, MILLION)
    np.testing.assert_array_equal(words, block_words(seed, 0, MILLION // 4).reshape(-1))


@pytest.mark.parametrize("seed", SEEDS)
def test_hosts_give_python_normals(host, tmp_path, seed):
    theirs = dump(host, tmp_path, "normals", seed, MILLION)
    ours = normals(seed, MILLION)
    assert theirs.shape == ours.shape
    assert np.abs(theirs.astype(np.float64) - ours).max() <= 1e-6


@pytest.mark.parametrize("chunk", [1, 7, 4097])
def test_hosts_draw_in_chunks_like_one_draw(host, tmp_path, chunk):
    """Draws of 1, 7 or 4097 normals start inside a block: the stream must not skip or repeat any."""
    theirs = dump(host, tmp_path, "normals", 12345, 10_003, chunk)
    assert np.abs(theirs.astype(np.float64) - normals(12345, 10_003)).max() <= 1e-6


# ---- offsets and streaming in Python -----------------------------------------------------------------
def test_normals_at_any_offset_are_a_slice_of_the_stream():
    stream = normals(7, 4 * 1000 + 30)
    for offset in [0, 1, 2, 3, 5, 4 * 1000 + 1]:
        for count in [0, 1, 2, 3, 4, 5, 9, 13]:
            np.testing.assert_array_equal(normals(7, count, offset), stream[offset:offset + count])


def test_noise_stream_draws_are_one_normals_call():
    shapes = [(2, 1, 3, 3), (5,), (), (0, 4), (3, 7), (1, 1, 8, 8)]
    stream = NoiseStream(2**40 + 7)
    draws = [stream.draw(shape) for shape in shapes]
    assert [d.shape for d in draws] == shapes and all(d.dtype == np.float32 for d in draws)
    np.testing.assert_array_equal(np.concatenate([d.reshape(-1) for d in draws]), normals(2**40 + 7, stream.offset))
    assert stream.offset == sum(int(np.prod(shape)) for shape in shapes)


def test_a_million_normals_take_well_under_half_a_second():
    best = min(_seconds(lambda: normals(1, MILLION)) for _ in range(3))
    assert best < 0.5, f"10^6 normals took {best:.3f} s"


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


# ---- statistics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_normals_look_standard_normal(seed):
    x = normals(seed, MILLION).astype(np.float64)
    # 5 standard errors: mean 1/sqrt(N), std ~ 1/sqrt(2N), P(|x| < 1) sqrt(p (1 - p) / N)
    assert abs(x.mean()) < 5 / np.sqrt(MILLION)
    assert abs(x.std() - 1) < 5 / np.sqrt(2 * MILLION)
    assert abs(np.mean(np.abs(x) < 1) - 0.682689) < 5 * np.sqrt(0.682689 * 0.317311 / MILLION)
    # u is never 0 or 1: every value finite, |x| <= sqrt(-2 ln(0.5 / 2^32)) ~ 6.76
    assert np.isfinite(x).all() and np.abs(x).max() < 6.77


def test_seeds_give_different_streams():
    first = [normals(seed, 8) for seed in SEEDS + [2**32, 2**64 - 1]]
    assert len({a.tobytes() for a in first}) == len(first)


# ---- bad seeds ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "3", None])
def test_bad_seed_raises(seed):
    with pytest.raises(ToolkitError, match="seed"):
        NoiseStream(seed)
    with pytest.raises(ToolkitError, match="seed"):
        normals(seed, 4)


def test_negative_count_or_offset_raises():
    with pytest.raises(ToolkitError):
        normals(0, -1)
    with pytest.raises(ToolkitError):
        normals(0, 4, -1)


@pytest.mark.parametrize("seed", ["-1", "2 ** 53", "2n ** 64n", "-1n", "1.5", "'3'"])
def test_bad_seed_raises_in_javascript(node, seed):
    script = (f"import {{ NoiseStream }} from {(WEB / 'noise.mjs').as_uri()!r};"
              f"try {{ new NoiseStream({seed}); }} catch (e) {{ if (e instanceof RangeError) process.exit(3); }}")
    assert subprocess.run([node, "--input-type=module", "-e", script]).returncode == 3


def test_javascript_accepts_number_and_bigint_seeds_alike(node):
    script = (f"import {{ NoiseStream }} from {(WEB / 'noise.mjs').as_uri()!r};"
              "const a = new NoiseStream(2 ** 40 + 7).draw(5), b = new NoiseStream(2n ** 40n + 7n).draw(5);"
              "console.log(Array.from(a).join(' ') === Array.from(b).join(' '), Array.from(a).join(' '));")
    same, *values = run(node, "--input-type=module", "-e", script).split()
    assert same == "true"
    np.testing.assert_array_equal(np.array(values, dtype=np.float32), normals(2**40 + 7, 5))


# ---- the test vectors in docs/noise.md ---------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_docs_list_the_first_normals(seed):
    first = " ".join(f"{x:.9g}" for x in normals(seed, 8).tolist())
    assert f"| {seed} | {first} |" in (REPO / "docs" / "noise.md").read_text()
