"""Offline sample quality: FID's formula on a dataset-specific classifier's features.

No Inception weights can be downloaded here, and no published FID exists for these datasets, so the
feature extractor is a small CNN trained on the same data (bench/classifier.py, exported to ONNX):
- `frechet_distance`: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between the Gaussians fitted to
  the penultimate-layer features of two image sets (scipy's `sqrtm`, as FID's reference code does);
- `classifier_score`: the Inception-Score analogue, exp(E_x KL(p(y|x) || p(y))), from 1 to #classes;
- `class_histogram`: the share of samples per predicted class, so that a missing mode shows.

This module needs numpy, scipy and onnxruntime only (the runtime's environment, plus scipy).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..runtime.errors import ToolkitError


# ---- the metric --------------------------------------------------------------------------------------------
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


def frechet_distance(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    """Fréchet distance between N(a.mu, a.sigma) and N(b.mu, b.sigma) (the FID formula)."""
    from scipy import linalg

    import warnings

    diff = a.mu - b.mu
    with warnings.catch_warnings():  # dead ReLU features make the product singular: handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        covmean = linalg.sqrtm(a.sigma @ b.sigma)
    if not np.all(np.isfinite(covmean)):  # singular product: nudge both diagonals, as FID's reference code does
        offset = np.eye(len(a.sigma)) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classifier_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): 1 for a single class or uninformative predictions, #classes at best."""
    p = softmax(np.asarray(logits, dtype=np.float64))
    marginal = p.mean(axis=0, keepdims=True)
    kl = (p * (np.log(p + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
    return float(np.exp(kl.mean()))


def class_histogram(logits: np.ndarray, classes: int) -> np.ndarray:
    """Share of samples per predicted class."""
    counts = np.bincount(np.asarray(logits).argmax(axis=1), minlength=classes)
    return counts / max(1, counts.sum())


# ---- data with labels --------------------------------------------------------------------------------------
def labeled_images(data: str, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, H, W, 1), int labels (N,)): the embedded digits, or an IDX folder (Fashion-MNIST's
    train-images/train-labels files)."""
    from ..train.data import _fit, read_idx

    if data == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        return _fit(images, image_size, 1, "digits"), digits.target.astype(np.int64)
    folder = Path(data)
    if not folder.is_dir():
        raise ToolkitError(f"quality needs labelled data: 'digits' or a folder with IDX images and labels, got {data}")
    pick = lambda kind: sorted(p for p in folder.iterdir() if p.name.startswith(f"train-{kind}"))  # noqa: E731
    images, labels = pick("images"), pick("labels")
    if not images or not labels:
        raise ToolkitError(f"no train-images / train-labels IDX files in {folder}")
    x, y = read_idx(images[0]), read_idx(labels[0])
    if len(x) != len(y):
        raise ToolkitError(f"{images[0]} has {len(x)} images but {labels[0]} has {len(y)} labels")
    return _fit(x, image_size, 1, str(images[0])), y.astype(np.int64)


def split_indices(n: int, seed: int = 0, test_fraction: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """The classifier's fixed train/test split."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - test_fraction)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) on [-1, 1]."""
    return (np.asarray(images).astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


# ---- the classifier in onnxruntime -------------------------------------------------------------------------
class FeatureModel:
    """The exported classifier: (logits, features) for uint8 images, in chunks."""

    def __init__(self, path: Path, threads: Optional[int] = None):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise ToolkitError(f"classifier not found: {path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        sidecar = Path(str(path) + ".json")
        self.info: Dict[str, Any] = json.loads(sidecar.read_text()) if sidecar.is_file() else {}

    def __call__(self, images: np.ndarray, chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
        x = to_model_range(images)
        parts = [self.session.run(["logits", "features"], {"x": x[i:i + chunk]}) for i in range(0, len(x), chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def bootstrap_sd(features: np.ndarray, reference: FeatureStats, resamples: int = 20, seed: int = 0) -> float:
    """Standard deviation of the Fréchet distance over resamplings (with replacement) of the sample set:
    how much the distance would move with another set of this size."""
    rng = np.random.default_rng(seed)
    values = [frechet_distance(FeatureStats.of(features[rng.integers(0, len(features), len(features))]), reference)
              for _ in range(resamples)]
    return float(np.std(values, ddof=1))


def evaluate(model: FeatureModel, images: np.ndarray, reference: FeatureStats, classes: int,
             resamples: int = 20) -> Dict[str, Any]:
    """Fréchet distance to the reference statistics (+ its bootstrap sd), classifier score, class histogram."""
    logits, features = model(images)
    return {"n": len(images), "fd": frechet_distance(FeatureStats.of(features), reference),
            "fd_sd": bootstrap_sd(features, reference, resamples) if resamples else None,
            "score": classifier_score(logits), "histogram": class_histogram(logits, classes).round(4).tolist()}
