"""`cli.py quality`: the Fréchet-distance table of one trained model, per scheduler and step count.

MindSpore runs only in child processes (the ONNX export with its numeric gate, the classifier's
training); sampling and the metric run here on onnxruntime, as a user of the runtime would.

Reference set: the model's training images, with their mirror images when the run trained with
horizontal flips (the toolkit's default), since that is the distribution the model learns. Baselines:
"real vs real" (two disjoint halves of the images, each with its mirrors), "noise" (clipped Gaussian
noise images).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime.errors import ToolkitError
from ..runtime.processes import module_command

from .quality import FeatureModel, FeatureStats, evaluate, frechet_distance, labeled_images

Log = Callable[[str], None]
RUNS = (("ddpm", 200), ("ddim", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10))
NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++"}
TARGETS = {("dpmpp", 20): 0.10, ("ddim", 50): 0.05}  # allowed FD excess over DDPM-200's
GRID = 36


def _run(args: List[str], log: Log) -> subprocess.CompletedProcess:
    log("$ python -m " + " ".join(args))
    result = subprocess.run(module_command(*args), capture_output=True, text=True,
                            env={**os.environ, "GLOG_v": "3"})
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolkitError(f"`python -m {' '.join(args[:2])} ...` failed (exit {result.returncode}): {tail[:300]}")
    return result


def _export(checkpoint: Path, work: Path, log: Log) -> Path:
    onnx_path = work / "unet.onnx"
    _run(["cli", "export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(onnx_path)], log)
    return onnx_path


def _classifier(path: Optional[Path], work: Path, data: str, image_size: int, hflip: bool, steps: int, log: Log) -> Path:
    if path is not None:
        return path
    path = work / "classifier.onnx"
    sidecar = Path(str(path) + ".json")
    if path.is_file() and sidecar.is_file():
        info = json.loads(sidecar.read_text())
        if (info.get("data"), info.get("image_size"), info.get("hflip"), info.get("steps")) == (data, image_size, hflip, steps):
            log(f"reusing the classifier {path} (test accuracy {info['test_accuracy']:.4f})")
            return path
    args = ["bench.classifier", str(path), "--data", data, "--image-size", str(image_size), "--steps", str(steps)]
    _run(args + (["--hflip"] if hflip else []), log)
    return path


def _with_mirrors(images: np.ndarray, hflip: bool) -> np.ndarray:
    return np.concatenate([images, images[:, :, ::-1]]) if hflip else images


def run_quality(checkpoint: Path, out: Path, *, work: Path, n: int = 2000, seeds: Sequence[int] = (0,),
                classifier: Optional[Path] = None, classifier_steps: int = 800, threads: Optional[int] = None,
                runs: Sequence[Tuple[str, int]] = RUNS, log: Log = print, command: str = "") -> Dict[str, Any]:
    from ..runtime.pipeline import Sampler

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = _export(checkpoint, work, log)
    manifest = json.loads(Path(str(onnx_path) + ".json").read_text())
    config = manifest["config"]
    data, image_size, hflip = config["train"]["data"], config["model"]["image_size"], bool(config["train"]["hflip"])
    if config["model"]["channels"] != 1:
        raise ToolkitError("quality supports 1-channel models (digits, Fashion-MNIST)")
    model = FeatureModel(_classifier(classifier, work, data, image_size, hflip, classifier_steps, log), threads)
    classes = int(model.info.get("classes", 10))

    images, _ = labeled_images(data, image_size)
    reference = _with_mirrors(images, hflip)
    ref_logits, ref_features = model(reference)
    ref_stats = FeatureStats.of(ref_features)
    halves = np.array_split(np.random.default_rng(0).permutation(len(images)), 2)
    half_stats = [FeatureStats.of(model(_with_mirrors(images[h], hflip))[1]) for h in halves]
    from .quality import class_histogram, classifier_score

    rows: List[Dict[str, Any]] = [{
        "name": "real vs real (disjoint halves)", "n": int(min(len(h) for h in halves)) * (2 if hflip else 1),
        "fd": frechet_distance(*half_stats), "score": classifier_score(ref_logits),
        "histogram": class_histogram(ref_logits, classes).round(4).tolist(), "seconds": None}]
    noise = np.random.default_rng(0).standard_normal((n, image_size, image_size, 1))
    noise_images = np.clip((noise + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    rows.append({"name": "noise (clipped Gaussian)", "seconds": None, **evaluate(model, noise_images, ref_stats, classes)})

    sampler = Sampler.load(onnx_path, threads=threads)
    T = len(manifest["betas"])
    grids: Dict[str, np.ndarray] = {}
    for scheduler, steps in runs:
        steps = min(steps, T)
        label = f"{NAMES[scheduler]}-{steps}"
        for seed in seeds:
            log(f"sampling {n} images: {label}, seed {seed} ...")
            began = time.perf_counter()
            samples = sampler.sample(n, scheduler, steps, seed=seed)
            seconds = time.perf_counter() - began
            rows.append({"name": label, "scheduler": scheduler, "steps": steps, "seed": seed, "seconds": seconds,
                         **evaluate(model, samples, ref_stats, classes)})
            grids.setdefault(label, samples[:GRID])
            log(f"  {seconds:.1f} s, FD {rows[-1]['fd']:.3f}, score {rows[-1]['score']:.2f}")

    result = {"command": command, "checkpoint": str(checkpoint), "onnx": str(onnx_path), "config": config,
              "classifier": model.info, "n": n, "seeds": list(seeds), "reference_images": len(reference),
              "rows": rows, "targets": _targets(rows), "threads": threads,
              "load_average": [round(v, 2) for v in os.getloadavg()], "duration_s": round(time.perf_counter() - started, 1)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    picture = save_comparison(out.with_suffix(".png"), grids)
    result["picture"] = str(picture)
    out.with_suffix(".md").write_text(render_quality(result))
    log(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')} and {picture} ({result['duration_s']:.0f} s)")
    return result


def _mean_fd(rows: List[Dict[str, Any]], scheduler: str, steps: int) -> Optional[float]:
    values = [r["fd"] for r in rows if r.get("scheduler") == scheduler and r.get("steps") == steps]
    return float(np.mean(values)) if values else None


def _targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    base = _mean_fd(rows, "ddpm", 200)
    out = []
    for (scheduler, steps), allowed in TARGETS.items():
        value = _mean_fd(rows, scheduler, steps)
        if base is None or value is None:
            continue
        excess = value / base - 1.0
        out.append({"target": f"{NAMES[scheduler]}-{steps} within {allowed:.0%} of DDPM-200's FD", "fd": value,
                    "ddpm_fd": base, "excess": excess, "met": excess <= allowed})
    return out


def save_comparison(path: Path, grids: Dict[str, np.ndarray], scale: int = 4) -> Path:
    """One PNG: a grid of samples per scheduler, side by side, each titled."""
    from PIL import Image, ImageDraw

    from ..runtime.images import make_grid

    tiles = [(label, make_grid(images, columns=int(np.ceil(np.sqrt(len(images)))))) for label, images in grids.items()]
    title_h, gap = 16, 12
    pictures = []
    for label, grid in tiles:
        picture = Image.fromarray(grid[..., 0]).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
        canvas = Image.new("L", (picture.width, picture.height + title_h), 255)
        canvas.paste(picture, (0, title_h))
        ImageDraw.Draw(canvas).text((2, 2), label, fill=0)
        pictures.append(canvas)
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    sheet = Image.new("L", (width, max(p.height for p in pictures)), 255)
    left = 0
    for picture in pictures:
        sheet.paste(picture, (left, 0))
        left += picture.width + gap
    sheet.save(path)
    return path


def render_quality(result: Dict[str, Any]) -> str:
    from .report import table

    info = result["classifier"]
    lines = [f"# Sample quality\n\nGenerated by `{result['command'] or 'cli.py quality'}` in {result['duration_s']:.0f} s "
             f"(load average at the end {result['load_average']}).\n",
             f"Model: `{result['checkpoint']}` ({result['config']['model']}, T={len(json.loads(Path(result['onnx'] + '.json').read_text())['betas'])}, "
             f"{result['config']['train']['steps']} steps), sampled on onnxruntime from its ONNX export (numeric gate passed).\n",
             f"Feature extractor: a CNN classifier trained with MindSpore on `{info.get('data')}` "
             f"({info.get('train_images')} training / {info.get('test_images')} test images, {info.get('steps')} steps"
             f"{', random mirroring' if info.get('hflip') else ''}), exported to ONNX: **test accuracy "
             f"{100 * info.get('test_accuracy', float('nan')):.1f}%** ({100 * info.get('test_accuracy_mirrored', float('nan')):.1f}% "
             f"on mirrored test images). FD: Fréchet distance between the {info.get('features')}-d penultimate features of "
             f"{result['n']} samples and of the {result['reference_images']} reference images; score: exp(E KL(p(y|x) || p(y))) "
             f"(10 at best); histogram: share of samples per predicted class 0-9. The ± is the standard deviation of FD over 20 "
             f"bootstrap resamplings of the sample set. FD is biased upward for small sets (it estimates a 128x128 "
             f"covariance), so compare rows of the same n.\n"]
    rows = []
    for r in result["rows"]:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        seed = "" if "seed" not in r else str(r["seed"])
        fd = f"{r['fd']:.2f}" + (f" ± {r['fd_sd']:.2f}" if r.get("fd_sd") else "")
        rows.append([r["name"], seed, r["n"], seconds, fd, f"{r['score']:.2f}",
                     " ".join(f"{100 * h:.0f}" for h in r["histogram"])])
    lines.append(table(["samples", "seed", "n", "seconds", "FD ± bootstrap sd", "score", "class histogram (%)"], rows))
    if result["targets"]:
        lines.append("\n## Targets\n")
        lines.append(table(["target", "FD", "DDPM-200 FD", "difference", "status"],
                           [[t["target"], f"{t['fd']:.3f}", f"{t['ddpm_fd']:.3f}", f"{100 * t['excess']:+.1f}%",
                             "met" if t["met"] else "missed"] for t in result["targets"]]))
    lines.append(f"\n![samples per scheduler]({Path(result['picture']).name})\n")
    return "\n".join(lines)
