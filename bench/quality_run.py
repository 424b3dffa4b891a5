"""`cli.py quality`: the Fréchet-distance table of one trained model, per scheduler and step count.

MindSpore runs only in child processes (the ONNX export with its numeric gate, the classifier's
training); sampling and the metric run here on onnxruntime, as a user of the runtime would. The
reference set is the model's training images, with their mirror images when it trained with flips.
Baselines: "real vs real" (two disjoint halves of the images), "noise" (clipped Gaussian noise).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime.errors import ToolkitError
from ..runtime.files import write_text_atomic
from ..runtime.images import make_grid, save_grid
from ..runtime.manifest import Manifest, manifest_path_for
from ..runtime.processes import run_module

from .harness import load_average
from .quality import FeatureModel, FeatureStats, class_histogram, classifier_score, evaluate, frechet_distance, \
    labeled_images
from .report import SCHEDULER_NAMES, table

Log = Callable[[str], None]
RUNS = (("ddpm", 200), ("ddim", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10))
TARGETS = {("dpmpp", 20): 0.10, ("ddim", 50): 0.05}  # allowed FD excess over DDPM-200's
GRID = 36


def _classifier(work: Path, data: str, image_size: int, hflip: bool, steps: int, log: Log) -> Path:
    """The classifier in WORK, reused when trained with the same settings, else trained now."""
    path = work / "classifier.onnx"
    info = json.loads(Path(f"{path}.json").read_text()) if Path(f"{path}.json").is_file() and path.is_file() else {}
    if [info.get(k) for k in ("data", "image_size", "hflip", "steps")] == [data, image_size, hflip, steps]:
        log(f"reusing the classifier {path} (test accuracy {info['test_accuracy']:.4f})")
        return path
    log(f"training the classifier ({steps} steps) ...")
    run_module("bench.classifier", path, "--data", data, "--image-size", image_size, "--steps", steps,
               *(["--hflip"] if hflip else []), what="training the classifier")
    return path


def _with_mirrors(images: np.ndarray, hflip: bool) -> np.ndarray:
    return np.concatenate([images, images[:, :, ::-1]]) if hflip else images


def run_quality(checkpoint: Path, out: Path, *, work: Path, n: int = 2000, seeds: Sequence[int] = (0,),
                classifier: Optional[Path] = None, classifier_steps: int = 800, threads: Optional[int] = None,
                runs: Sequence[Tuple[str, int]] = RUNS, log: Log = print, command: str = "") -> Dict[str, Any]:
    """Sample, score and write OUT.json, OUT.png and OUT.md (`out`: absolute, without suffix)."""
    from ..runtime.pipeline import Sampler

    began = time.perf_counter()
    onnx_path = work / "unet.onnx"
    log(f"exporting {checkpoint} to ONNX (with the numeric gate) ...")
    run_module("cli", "export", "--checkpoint", checkpoint, "--format", "onnx", "--out", onnx_path,
               what="the ONNX export")
    manifest = Manifest.load(manifest_path_for(onnx_path))
    config = manifest.run_config
    data, size, hflip = config.train.data, config.model.image_size, config.train.hflip
    if config.model.channels != 1:
        raise ToolkitError("quality supports 1-channel models (digits, Fashion-MNIST)")
    model = FeatureModel(classifier or _classifier(work, data, size, hflip, classifier_steps, log), threads)
    classes = int(model.info.get("classes", 10))

    images, _ = labeled_images(data, size)
    ref_logits, ref_features = model(_with_mirrors(images, hflip))
    reference = FeatureStats.of(ref_features)
    halves = np.array_split(np.random.default_rng(0).permutation(len(images)), 2)
    noise = np.random.default_rng(0).standard_normal((n, size, size, 1))
    rows: List[Dict[str, Any]] = [
        {"name": "real vs real (disjoint halves)", "n": min(map(len, halves)) * (2 if hflip else 1), "seconds": None,
         "fd": frechet_distance(*(FeatureStats.of(model(_with_mirrors(images[h], hflip))[1]) for h in halves)),
         "score": classifier_score(ref_logits), "histogram": class_histogram(ref_logits, classes).round(4).tolist()},
        {"name": "noise (clipped Gaussian)", "seconds": None, **evaluate(
            model, np.clip((noise + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8), reference, classes)}]
    sampler = Sampler.load(onnx_path, threads=threads)
    grids = []
    for scheduler, steps in runs:
        steps = min(steps, manifest.timesteps)
        label = f"{SCHEDULER_NAMES[scheduler]}-{steps}"
        for seed in seeds:
            log(f"sampling {n} images: {label}, seed {seed} ...")
            started = time.perf_counter()
            samples = sampler.sample(n, scheduler, steps, seed=seed)
            rows.append({"name": label, "scheduler": scheduler, "steps": steps, "seed": seed,
                         "seconds": time.perf_counter() - started, **evaluate(model, samples, reference, classes)})
            log(f"  {rows[-1]['seconds']:.1f} s, FD {rows[-1]['fd']:.3f}, score {rows[-1]['score']:.2f}")
        grids.append((label, samples[:GRID]))

    result = {"command": command, "checkpoint": str(checkpoint), "config": manifest.config, "T": manifest.timesteps,
              "classifier": model.info, "n": n, "seeds": list(seeds), "reference_images": len(ref_features),
              "rows": rows, "targets": _targets(rows), "threads": threads, "load_average": load_average(),
              "grids": [label for label, _ in grids], "duration_s": round(time.perf_counter() - began, 1)}
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    save_grid(out.with_suffix(".png"), np.stack([make_grid(images) for _, images in grids]), scale=4,
              columns=len(grids))
    write_text_atomic(out.with_suffix(".md"), render_quality(result, out.with_suffix(".png").name))
    log(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')} and {out.with_suffix('.png')} "
        f"({result['duration_s']:.0f} s)")
    return result


def _targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    def mean_fd(scheduler: str, steps: int) -> Optional[float]:
        values = [r["fd"] for r in rows if (r.get("scheduler"), r.get("steps")) == (scheduler, steps)]
        return float(np.mean(values)) if values else None

    base, out = mean_fd("ddpm", 200), []
    for (scheduler, steps), allowed in TARGETS.items():
        value = mean_fd(scheduler, steps)
        if base and value is not None:
            out.append({"target": f"{SCHEDULER_NAMES[scheduler]}-{steps} within {allowed:.0%} of DDPM-200's FD",
                        "fd": value, "ddpm_fd": base, "excess": value / base - 1, "met": value / base - 1 <= allowed})
    return out


def render_quality(result: Dict[str, Any], picture: str) -> str:
    info = result["classifier"]
    rows = [[r["name"], r.get("seed", ""), r["n"], "" if r["seconds"] is None else f"{r['seconds']:.1f}",
             f"{r['fd']:.2f}" + (f" ± {r['fd_sd']:.2f}" if r.get("fd_sd") else ""), f"{r['score']:.2f}",
             " ".join(f"{100 * h:.0f}" for h in r["histogram"])] for r in result["rows"]]
    lines = [f"# Sample quality\n\nGenerated by `{result['command'] or 'cli.py quality'}` in {result['duration_s']:.0f} s "
             f"(load average at the end {result['load_average']}).\n",
             f"Model: `{result['checkpoint']}` ({result['config']['model']}, T={result['T']}, "
             f"{result['config']['train']['steps']} steps), sampled on onnxruntime from its ONNX export (numeric gate "
             "passed).\n",
             f"Features: a CNN classifier trained with MindSpore on `{info.get('data')}` ({info.get('steps')} steps"
             f"{', random mirroring' if info.get('hflip') else ''}; **test accuracy {100 * info.get('test_accuracy', 0):.1f}%**"
             f", {100 * info.get('test_accuracy_mirrored', 0):.1f}% mirrored), run on onnxruntime; the method is in "
             f"docs/quality.md. FD: Fréchet distance between the features of {result['n']} samples and of the "
             f"{result['reference_images']} reference images (± its sd over 20 bootstrap resamplings; biased upward "
             "for small n: compare rows of the same n); score: exp(E KL(p(y|x) || p(y))), 10 at best; histogram: "
             "share of samples per predicted class.\n",
             table(["samples", "seed", "n", "seconds", "FD ± bootstrap sd", "score", "class histogram (%)"], rows)]
    if result["targets"]:
        lines += ["\n## Targets\n", table(["target", "FD", "DDPM-200 FD", "difference", "status"], [
            [t["target"], f"{t['fd']:.3f}", f"{t['ddpm_fd']:.3f}", f"{100 * t['excess']:+.1f}%",
             "met" if t["met"] else "missed"] for t in result["targets"]])]
    lines.append(f"\n![samples per scheduler, left to right: {', '.join(result['grids'])}]({picture})\n")
    return "\n".join(lines)
