"""Offline sample quality: FID's formula on a dataset-specific classifier's features (no download).

The feature extractor is a small CNN trained on the model's own data (bench/classifier.py, run as
ONNX on onnxruntime). `frechet_distance` is ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between
Gaussians fitted to two sets of features; `classifier_score` is the Inception-Score analogue
exp(E_x KL(p(y|x) || p(y))); `class_histogram` shows a missing mode. Needs numpy, scipy, onnxruntime.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime.errors import ToolkitError
from .harness import onnx_session


@dataclass(frozen=True)
class FeatureStats:
    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: np.ndarray) -> "FeatureStats":
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need (n >= 2, d) features, got shape {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def _sqrtm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy import linalg

    with warnings.catch_warnings():  # dead ReLU features make the product singular: handled by the caller
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(a @ b)


def frechet_distance(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    """Fréchet distance between N(a.mu, a.sigma) and N(b.mu, b.sigma) (the FID formula)."""
    covmean = _sqrtm(a.sigma, b.sigma)
    if not np.all(np.isfinite(covmean)):  # singular product: nudge both diagonals, as FID's reference code does
        offset = np.eye(len(a.sigma)) * eps
        covmean = _sqrtm(a.sigma + offset, b.sigma + offset)
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    diff = a.mu - b.mu
    return max(0.0, float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean)))


def classifier_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): 1 for a single class or uninformative predictions, #classes at best."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    kl = (p * (np.log(p + 1e-12) - np.log(p.mean(axis=0, keepdims=True) + 1e-12))).sum(axis=1)
    return float(np.exp(kl.mean()))


def class_histogram(logits: np.ndarray, classes: int) -> np.ndarray:
    """Share of samples per predicted class."""
    counts = np.bincount(np.asarray(logits).argmax(axis=1), minlength=classes)
    return counts / max(1, counts.sum())


def labeled_images(data: str, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, H, W, 1), int labels): the embedded digits, or an IDX folder with train-images/-labels."""
    from ..train.data import _fit, load_digits_images, read_idx

    if data == "digits":
        from sklearn.datasets import load_digits

        return _fit(load_digits_images(), image_size, 1, data), load_digits().target.astype(np.int64)
    folder = Path(data)
    files = {kind: sorted(folder.glob(f"train-{kind}*")) if folder.is_dir() else [] for kind in ("images", "labels")}
    if not files["images"] or not files["labels"]:
        raise ToolkitError(f"quality needs labelled data: 'digits' or a folder with train-images and train-labels "
                           f"IDX files, got {data}")
    x, y = read_idx(files["images"][0]), read_idx(files["labels"][0])
    if len(x) != len(y):
        raise ToolkitError(f"{files['images'][0]} has {len(x)} images but {files['labels'][0]} has {len(y)} labels")
    return _fit(x, image_size, 1, str(files["images"][0])), y.astype(np.int64)


def split_indices(n: int, seed: int = 0, test_fraction: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """The classifier's fixed train/test split."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - test_fraction)))
    return np.sort(order[:cut]), np.sort(order[cut:])


class FeatureModel:
    """The exported classifier: (logits, features) for uint8 images, in chunks."""

    def __init__(self, path: Path, threads: Optional[int] = None):
        if not Path(path).is_file():
            raise ToolkitError(f"classifier not found: {path}")
        self.session = onnx_session(str(path), threads)
        sidecar = Path(f"{path}.json")
        self.info: Dict[str, Any] = json.loads(sidecar.read_text()) if sidecar.is_file() else {}

    def __call__(self, images: np.ndarray, chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
        from ..train.data import to_model_range

        x = to_model_range(np.asarray(images))
        parts = [self.session.run(["logits", "features"], {"x": x[i:i + chunk]}) for i in range(0, len(x), chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass(frozen=True)
class Difference:
    """A set's FD minus the baseline set's, with its bootstrap interval."""
    value: float
    low: float
    high: float


def paired_differences(features: Sequence[np.ndarray], reference: FeatureStats, baseline: int = 0, *,
                       paired: bool = True, resamples: int = 200, level: float = 0.95,
                       seed: int = 0) -> List[Difference]:
    """FD(set) - FD(baseline set) for every set, with a percentile bootstrap interval.

    Paired (image i of every set comes from the same x_T and noise path): each resampling draws one set of
    image indices for all sets, so what the sets share cancels in the difference. Unpaired: each set is
    resampled on its own indices."""
    sizes = {len(f) for f in features}
    if paired and len(sizes) != 1:
        raise ValueError(f"paired sets must have the same number of images, got {sorted(sizes)}")
    rng = np.random.default_rng(seed)

    def fds(pick: Callable[[int], np.ndarray]) -> np.ndarray:
        return np.array([frechet_distance(FeatureStats.of(f[pick(len(f))]), reference) for f in features])

    def resample() -> np.ndarray:
        if not paired:
            return fds(lambda n: rng.integers(0, n, n))
        shared = rng.integers(0, len(features[0]), len(features[0]))
        return fds(lambda n: shared)

    point = fds(np.arange)
    boot = np.array([resample() for _ in range(resamples)])
    spread = boot - boot[:, [baseline]]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(spread, [tail, 100 - tail], axis=0)
    return [Difference(float(p - point[baseline]), float(lo), float(hi)) for p, lo, hi in zip(point, low, high)]
