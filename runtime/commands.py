"""The runtime's CLI commands: `sample --artifact ...` (with a progress bar over the steps) and `info`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import typer

from .errors import ToolkitError
from .images import check_outputs, save_samples, to_uint8
from .manifest import Manifest, manifest_path_for
from .progress import progress_bar


def check_artifact_path(artifact: Path) -> Path:
    """An exported model file; a folder or a manifest given instead gets a message that names the file to give."""
    artifact = Path(artifact)
    if artifact.is_dir():
        models = sorted(path.name for path in artifact.iterdir() if manifest_path_for(path).is_file())
        example = artifact / (models[0] if models else "unet.onnx")
        raise ToolkitError(f"{artifact} is a folder: give the model file, e.g. {example}")
    if artifact.suffix.lower() == ".json":
        raise ToolkitError(f"give the model file, not its manifest: {artifact.with_suffix('')}")
    if not artifact.is_file():
        raise ToolkitError(f"artifact not found: {artifact}")
    return artifact


def sample_artifact(artifact: Path, *, backend: Optional[str], scheduler: Optional[str], steps: Optional[int],
                    eta: Optional[float],
                    n: int, batch: Optional[int], seed: int, out: Path, gif: Optional[Path], npz: Optional[Path],
                    threads: Optional[int], providers: Optional[Sequence[str]], spacing: Optional[str] = None,
                    clip_x0: Optional[bool] = None, precision: Optional[str] = None, progress: bool = True) -> None:
    """Sample n images from an exported artifact; write the grid (+ GIF of the denoising, + .npz)."""
    check_outputs(out, gif, npz)
    from .pipeline import Sampler

    sampler = Sampler.load(check_artifact_path(artifact), backend, batch=batch, threads=threads, providers=providers,
                           precision=precision)
    settings = sampler.settings(scheduler, steps, eta=eta, spacing=spacing, clip_x0=clip_x0)  # None: the default
    chosen = settings.scheduler(sampler.tables)
    frames: List[np.ndarray] = []
    with progress_bar(progress, total=len(chosen.timesteps), desc=f"{settings.name} sampling", unit="step") as bar:
        def on_step(index: int, t: int, x: np.ndarray) -> None:
            bar.update()
            if gif is not None:
                frames.append(to_uint8(x))

        images = sampler.sample(n, chosen, seed=seed, callback=on_step)
    written = save_samples(out, images, gif, frames, npz)
    print(f"{n} images ({settings.name}, {len(chosen.timesteps)} steps, {sampler.backend.name}) -> "
          + ", ".join(map(str, written)))


def info(artifact: Path = typer.Argument(..., help="An exported model (unet.onnx, ...) or its manifest (unet.onnx.json).")
         ) -> None:
    """Describe an exported model from its manifest: format, config, batch policy, opset, gate result, sha256."""
    manifest = artifact if artifact.suffix.lower() == ".json" else manifest_path_for(check_artifact_path(artifact))
    typer.echo("\n".join([f"manifest: {manifest}", *Manifest.load(manifest).describe()]))
