"""`ms-ddpm quality`: sample quality per sampler, FID's formula on the features of a classifier trained on the
model's own data (train/classifier.py, in a child with MindSpore), run like the sampling on onnxruntime. Every
row follows each seed's x_T and Brownian path (`brownian_coupling`); docs/quality.md has the details."""
from __future__ import annotations

import datetime
import json
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime.errors import ToolkitError
from ..runtime.files import write_text_atomic
from ..runtime.images import save_grid, to_uint8
from ..runtime.manifest import Manifest, manifest_path_for
from ..runtime.pipeline import Sampler
from ..runtime.processes import run_module
from ..runtime.schedulers import DEFAULT_SPACING, SCHEDULERS, SPACINGS, brownian_coupling
from ..train.classifier import train_classifier
from ..train.data import load_labeled_images, to_model_range

from .harness import Log, in_child, load_average, machine, onnx_session, table

NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++(2M)", "dpmpp-sde": "DPM-Solver++(2M) SDE",
         "dpmpp3m": "DPM-Solver++(3M)"}
DEFAULT_ROWS = ("ddpm:200,ddpm:50,ddim:50:eta=0,ddim:50:eta=1,dpmpp:20,"
                + ",".join(f"{name}:{steps}" for name in ("dpmpp-sde", "dpmpp3m") for steps in (50, 20, 10, 5)))
RESOLVE = 0.05  # an interval resolves a row when its half-width is at most this share of the baseline's FD
GRID = 36


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


class FeatureModel:
    """The exported classifier: (logits, features) for uint8 images, in chunks."""

    def __init__(self, path: Path, threads: Optional[int] = None):
        if not Path(path).is_file():
            raise ToolkitError(f"classifier not found: {path}")
        self.session = onnx_session(str(path), threads)
        sidecar = Path(f"{path}.json")
        self.info: Dict[str, Any] = json.loads(sidecar.read_text()) if sidecar.is_file() else {}

    def __call__(self, images: np.ndarray, chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
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
                       resamples: int = 200, level: float = 0.95, seed: int = 0) -> List[Difference]:
    """FD(set) - FD(baseline set) for every set, with a percentile bootstrap interval.

    Image i of every set comes from the same x_T and noise path: each resampling draws one set of image
    indices for all sets, so what the sets share cancels in the difference."""
    sizes = {len(f) for f in features}
    if len(sizes) != 1:
        raise ValueError(f"paired sets must have the same number of images, got {sorted(sizes)}")
    rng = np.random.default_rng(seed)

    def fds(picked: np.ndarray) -> np.ndarray:
        return np.array([frechet_distance(FeatureStats.of(f[picked]), reference) for f in features])

    n = sizes.pop()
    point = fds(np.arange(n))
    boot = np.array([fds(rng.integers(0, n, n)) for _ in range(resamples)])
    spread = boot - boot[:, [baseline]]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(spread, [tail, 100 - tail], axis=0)
    return [Difference(float(p - point[baseline]), float(lo), float(hi)) for p, lo, hi in zip(point, low, high)]


@dataclass(frozen=True)
class Row:
    """One sampler of the table: scheduler, steps and its options."""
    scheduler: str
    steps: int
    eta: float = 0.0
    spacing: str = DEFAULT_SPACING
    clip_x0: bool = False

    @property
    def label(self) -> str:
        extras = ([f"eta {self.eta:g}"] if self.scheduler == "ddim" else []) + \
            ([self.spacing] if self.spacing != DEFAULT_SPACING else []) + (["clip_x0"] if self.clip_x0 else [])
        return f"{NAMES[self.scheduler]}-{self.steps}" + (f" ({', '.join(extras)})" if extras else "")

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", self.label.lower()).strip("-")


def parse_rows(text: str) -> List[Row]:
    """Rows from `scheduler:steps[:eta=E][:spacing=S][:clip]`, comma-separated."""
    rows = [_parse_row(part.strip()) for part in text.split(",") if part.strip()]
    if not rows:
        raise ToolkitError("--rows is empty")
    return rows


def _parse_row(spec: str) -> Row:
    name, _, rest = spec.partition(":")
    steps, *options = rest.split(":")
    if name not in SCHEDULERS or not steps.isdigit() or int(steps) < 1:
        raise ToolkitError(f"a row is scheduler:steps[:eta=E][:spacing=S][:clip] with a scheduler of "
                           f"{', '.join(SCHEDULERS)} and steps >= 1, got {spec!r}")
    fields: Dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key == "eta" and name == "ddim" and re.fullmatch(r"\d+(\.\d*)?", value):
            fields["eta"] = float(value)
        elif key == "spacing" and value in SPACINGS:
            fields["spacing"] = value
        elif option == "clip":
            fields["clip_x0"] = True
        else:
            raise ToolkitError(f"unknown option {option!r} in row {spec!r}: eta=E (ddim only, E >= 0), spacing="
                               f"{'|'.join(SPACINGS)}, clip")
    return Row(name, int(steps), **fields)


def _classifier(work: Path, data: str, image_size: int, hflip: bool, steps: int, log: Log) -> Path:
    """The classifier in WORK, reused when trained with the same settings, else trained now."""
    path = work / "classifier.onnx"
    info = json.loads(Path(f"{path}.json").read_text()) if Path(f"{path}.json").is_file() and path.is_file() else {}
    if [info.get(k) for k in ("data", "image_size", "hflip", "steps")] == [data, image_size, hflip, steps]:
        log(f"reusing the classifier {path} (test accuracy {info['test_accuracy']:.4f})")
        return path
    log(f"training the classifier ({steps} steps) ...")
    in_child(train_classifier, out=path, data=data, image_size=image_size, steps=steps, hflip=hflip)
    return path


def _brownian_path(sampler: Sampler, n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """x_T and the T-step DDPM chain's step noise (T - 1, n, C, H, W) of a seed: the path every paired row follows."""
    x_T, step_noise = sampler.draw_noise(n, sampler.tables.timesteps - 1, seed)
    return x_T, np.stack(list(step_noise))


def _coupled_noise(coupling: np.ndarray, fine: np.ndarray) -> Iterator[np.ndarray]:
    """Each stochastic step's z: its row of `coupling` over the fine noise it spans (only those: a row has a
    handful of non-zero weights, and the T-step chain's rows one)."""
    for weights in coupling:
        span = np.flatnonzero(weights)
        yield np.tensordot(weights[span], fine[span], 1)


def _with_mirrors(images: np.ndarray, hflip: bool) -> np.ndarray:
    return np.concatenate([images, images[:, :, ::-1]]) if hflip else images


def _scores(logits: np.ndarray, fd: float, classes: int) -> Dict[str, Any]:
    return {"n": len(logits), "fd": fd, "score": classifier_score(logits),
            "histogram": class_histogram(logits, classes).round(4).tolist()}


def run_quality(checkpoint: Path, out: Path, *, work: Path, n: int, seeds: Sequence[int], rows: Sequence[Row],
                resamples: int, classifier: Optional[Path], classifier_steps: int, threads: Optional[int], log: Log,
                command: str) -> Dict[str, Any]:
    """Sample, score, and write OUT.json, OUT.md and a picture per row in OUT/ (`out`: absolute, without suffix)."""
    began, started = time.perf_counter(), datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    onnx_path = work / "unet.onnx"
    log(f"exporting {checkpoint} to ONNX (with the numeric gate) ...")
    run_module("cli", "export", "--checkpoint", checkpoint, "--format", "onnx", "--out", onnx_path,
               what="the ONNX export")
    manifest = Manifest.load(manifest_path_for(onnx_path))
    config = manifest.run_config
    data, size, hflip = config.train.data, config.model.image_size, config.train.hflip
    if config.model.channels != 1:
        raise ToolkitError("quality supports 1-channel models (digits, Fashion-MNIST)")
    too_long = [row.label for row in rows if row.steps > manifest.timesteps]
    if too_long:
        raise ToolkitError(f"rows with more steps than the model's T={manifest.timesteps}: {', '.join(too_long)}")
    model = FeatureModel(classifier or _classifier(work, data, size, hflip, classifier_steps, log), threads)
    classes = int(model.info.get("classes", 10))
    images, _ = load_labeled_images(data, size)
    ref_logits, ref_features = model(_with_mirrors(images, hflip))
    reference = FeatureStats.of(ref_features)
    halves = [model(_with_mirrors(images[h], hflip))[1]
              for h in np.array_split(np.random.default_rng(0).permutation(len(images)), 2)]
    noise = np.random.default_rng(0).standard_normal((n, size, size, 1))
    noise_logits, noise_features = model(np.clip((noise + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8))
    baselines = [{"name": "real vs real (disjoint halves)",
                  **_scores(ref_logits, frechet_distance(*map(FeatureStats.of, halves)), classes), "n": len(halves[0])},
                 {"name": "noise (clipped Gaussian)",
                  **_scores(noise_logits, frechet_distance(FeatureStats.of(noise_features), reference), classes)}]
    sampler = Sampler.load(onnx_path, threads=threads)
    paths = {seed: _brownian_path(sampler, n, seed) for seed in seeds}
    out.mkdir(parents=True, exist_ok=True)
    results, features = [], []
    for row in rows:
        logits, feats, seconds = [], [], 0.0
        scheduler = sampler.scheduler(row.scheduler, row.steps, eta=row.eta, spacing=row.spacing, clip_x0=row.clip_x0)
        coupling = brownian_coupling(scheduler.table(), sampler.tables)
        for seed, (x_T, fine) in paths.items():
            log(f"sampling {n} images: {row.label}, seed {seed} ...")
            row_began = time.perf_counter()
            samples = to_uint8(sampler.denoise(scheduler, x_T, _coupled_noise(coupling, fine)))
            seconds += time.perf_counter() - row_began
            for store, value in zip((logits, feats), model(samples)):
                store.append(value)
            if len(logits) == 1:
                save_grid(out / f"{row.slug}.png", samples[:GRID], scale=4)
        features.append(np.concatenate(feats))
        fd = frechet_distance(FeatureStats.of(features[-1]), reference)
        results.append({"name": row.label, **asdict(row), **_scores(np.concatenate(logits), fd, classes),
                        "calls": row.steps, "seconds": seconds, "picture": f"{out.name}/{row.slug}.png"})
        log(f"  {seconds:.1f} s, FD {fd:.3f}, score {results[-1]['score']:.2f}")
    np.savez_compressed(work / "features.npz", *features)
    log(f"bootstrapping the paired differences ({resamples} resamplings) ...")
    for result, diff in zip(results, paired_differences(features, reference, resamples=resamples)):
        result.update(difference=diff.value, low=diff.low, high=diff.high)
    first = features[0][:len(halves[0])]
    floor = {"real_vs_real": baselines[0]["fd"], "n": len(first),
             "baseline_vs_real_half": frechet_distance(FeatureStats.of(first), FeatureStats.of(halves[1]))}
    result = {"command": command, "started": started, "machine": machine(), "checkpoint": os.path.relpath(checkpoint),
              "config": manifest.config, "T": manifest.timesteps,
              "classifier": model.info, "n": n, "seeds": list(seeds), "resamples": resamples,
              "reference_images": len(ref_features), "baselines": baselines, "rows": results, "floor": floor,
              "resolution": _resolution(results), "threads": threads,
              "load_average": load_average(), "duration_s": round(time.perf_counter() - began, 1)}
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), render_quality(result))
    log(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')} and {out}/*.png "
        f"({result['duration_s']:.0f} s; baseline {results[0]['name']}, FD {results[0]['fd']:.2f})")
    return result


def _resolution(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The widest interval's half-width, as a share of the baseline's FD, and the n it would take to reach RESOLVE."""
    base, n = rows[0]["fd"], rows[0]["n"]
    widest = max([(r["high"] - r["low"]) / 2 / base for r in rows[1:]], default=0.0)
    return {"widest_half_width": widest, "n": n, "n_needed": int(np.ceil(n * (widest / RESOLVE) ** 2))}


def _histogram(row: Dict[str, Any]) -> str:
    return " ".join(f"{100 * share:.0f}" for share in row["histogram"])


def render_quality(result: Dict[str, Any]) -> str:
    """The Markdown report of `run_quality`'s result."""
    info, rows, res, floor = (result[k] for k in ("classifier", "rows", "resolution", "floor"))
    base = rows[0]
    body = [[b["name"], "", b["n"], "", f"{b['fd']:.2f}", "", "", f"{b['score']:.2f}", _histogram(b), ""]
            for b in result["baselines"]]
    body += [[r["name"], r["calls"], r["n"], f"{r['seconds']:.1f}", f"{r['fd']:.2f}",
              f"{r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]",
              "{:+.1f}% [{:+.1f}%, {:+.1f}%]".format(*(100 * r[k] / base["fd"] for k in ("difference", "low", "high"))),
              f"{r['score']:.2f}", _histogram(r), f"![]({r['picture']})"] for r in rows]
    return "\n".join([f"# Sample quality\n\n`{result['command']}` on {result['started']}: {result['duration_s']:.0f} s "
             f"on {result['machine']['cpu']} ({result['machine']['cpus']} cores), load average {result['load_average']}. "
             f"Model `{result['checkpoint']}` (T={result['T']}) on onnxruntime; features of a "
             f"classifier trained on `{info.get('data')}` (test accuracy {100 * info.get('test_accuracy', 0):.1f}%); FD "
             f"of {base['n']} samples per row (seeds {', '.join(map(str, result['seeds']))}) against "
             f"{result['reference_images']} reference images; paired differences to {base['name']} (every row on each seed's "
             f"x_T and Brownian path, one set of resampled image indices for all; "
             f"{result['resamples']} bootstrap resamplings, 95% interval). See docs/quality.md.\n",
             table(["samples", "U-Net calls", "n", "seconds", "FD", f"FD - {base['name']} [95% interval]",
                    "as % of its FD", "score", "class histogram (%)", "picture"], body),
             f"\nFloor: real vs real {floor['real_vs_real']:.2f}; {base['name']}'s first {floor['n']} samples vs the "
             f"second half {floor['baseline_vs_real_half']:.2f} ({floor['baseline_vs_real_half'] / floor['real_vs_real']:.2f}x). "
             f"Widest interval ±{100 * res['widest_half_width']:.1f}% of {base['name']}'s FD at n = {res['n']}; "
             f"±{100 * RESOLVE:.0f}% would take about n = {res['n_needed']}.\n"])
