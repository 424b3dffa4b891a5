"""Portable Gaussian noise: the same seed gives the same normals in Python, C++ and JavaScript.

Spec (docs/noise.md; runtime/hosts/cpp/noise.hpp and runtime/hosts/web/noise.mjs implement the same):
- Philox4x32-10 keyed by a uint64 seed, key = (seed & 0xffffffff, seed >> 32); block b has the
  counter (b & 0xffffffff, b >> 32, 0, 0) and yields 4 uint32 words.
- Each word w becomes u = (w + 0.5) / 2**32 in float64; Box-Muller on consecutive pairs (u1, u2):
  r = sqrt(-2 ln u1), n1 = r cos(2 pi u2), n2 = r sin(2 pi u2), in float64, then rounded to float32.
  So block b gives normals 4b .. 4b+3 of the seed's stream.
- A sampler consumes the stream in order, C-order flattened: x_T first, then each step's z.

    stream = NoiseStream(seed)
    x_T = stream.draw((n, C, H, W))
    z = stream.draw((n, C, H, W))
"""
from __future__ import annotations

import operator
from typing import Sequence, Tuple

import numpy as np

from .errors import ToolkitError

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key bumps (golden ratio, sqrt(3) - 1)
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
SEED_MAX = 2**64 - 1
TWO_PI = 2.0 * np.pi  # 6.283185307179586, the same double in every host


def philox4x32(counters: np.ndarray, key: Tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of each counter: (N, 4) uint32 counters, key (k0, k1) -> (N, 4) uint32 words."""
    c0, c1, c2, c3 = np.asarray(counters, dtype=np.uint32).astype(np.uint64).T
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        product0 = np.uint64(PHILOX_M[0]) * c0
        product1 = np.uint64(PHILOX_M[1]) * c2
        c0, c1, c2, c3 = ((product1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), product1 & np.uint64(MASK32),
                          (product0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), product0 & np.uint64(MASK32))
        k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def seed_key(seed: int) -> Tuple[int, int]:
    """The Philox key of a seed in [0, 2**64 - 1]; anything else is a ToolkitError."""
    try:
        seed = operator.index(seed)
    except TypeError as exc:
        raise ToolkitError(f"the noise seed must be an integer, got {seed!r}") from exc
    if not 0 <= seed <= SEED_MAX:
        raise ToolkitError(f"the noise seed must be in [0, 2**64 - 1], got {seed}")
    return seed & MASK32, seed >> 32


def block_words(seed: int, first_block: int, blocks: int) -> np.ndarray:
    """The (blocks, 4) uint32 words of blocks first_block .. first_block + blocks - 1 of a seed's stream."""
    b = np.arange(first_block, first_block + blocks, dtype=np.uint64)
    zeros = np.zeros_like(b)
    counters = np.stack([b & np.uint64(MASK32), b >> np.uint64(32), zeros, zeros], axis=-1)
    return philox4x32(counters, seed_key(seed))


def box_muller(words: np.ndarray) -> np.ndarray:
    """(N, 4) uint32 words -> (N, 4) float32 normals: pairs (w0, w1) and (w2, w3) through Box-Muller."""
    u = (words.astype(np.float64) + 0.5) / 2.0**32
    r = np.sqrt(-2.0 * np.log(u[:, 0::2]))
    theta = TWO_PI * u[:, 1::2]
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1).reshape(len(words), 4).astype(np.float32)


def normals(seed: int, count: int, offset: int = 0) -> np.ndarray:
    """Normals offset .. offset + count - 1 of the seed's stream, as float32 (shape (count,))."""
    if count < 0 or offset < 0:
        raise ToolkitError(f"count and offset must be >= 0, got count={count}, offset={offset}")
    first, last = offset // 4, (offset + count + 3) // 4
    start = offset - 4 * first
    return box_muller(block_words(seed, first, last - first)).reshape(-1)[start:start + count]


class NoiseStream:
    """A seed's normals, handed out in order: each `draw` continues where the last one stopped."""

    def __init__(self, seed: int):
        seed_key(seed)  # fail now, not on the first draw
        self.seed = seed
        self.offset = 0

    def draw(self, shape: Sequence[int]) -> np.ndarray:
        """The next prod(shape) normals, C-order, as a float32 array of `shape`."""
        count = int(np.prod(shape, dtype=np.int64))
        out = normals(self.seed, count, self.offset).reshape(shape)
        self.offset += count
        return out
