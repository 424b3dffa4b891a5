"""The runtime's CLI commands: `sample --artifact ...` (with a progress bar over the steps), `info` and `bundle`."""
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


def info(path: Path = typer.Argument(..., help="An exported model (unet.onnx, ...), its manifest (unet.onnx.json), "
                                              "or a bundle folder (ms-ddpm bundle).")) -> None:
    """Describe an exported model or a bundle, and check it: the model's sha256 against its manifest, every file of a
    bundle against its bundle.json. Exit 1 when something does not match."""
    from .bundle import BUNDLE_FILE, describe_bundle

    if path.is_dir() and (path / BUNDLE_FILE).is_file():
        lines, ok = describe_bundle(path)
    else:
        artifact = path.with_suffix("") if path.suffix.lower() == ".json" else check_artifact_path(path)
        manifest = Manifest.load(manifest_path_for(artifact))
        check, ok = manifest.check_artifact(artifact)
        lines = [f"manifest: {manifest_path_for(artifact)}", *manifest.describe(), check]
    typer.echo("\n".join(lines))
    if not ok:
        raise typer.Exit(1)


def bundle(
    artifact: Path = typer.Argument(..., help="A sampler-step artifact: .lite.mindir for --host cpp, .onnx for --host web "
                                              "(ms-ddpm export --sampler NAME), with its manifest beside it."),
    host: str = typer.Option(..., help="cpp (ddpm-sample on MindSpore Lite) | web (a static page on onnxruntime-web)."),
    out: Path = typer.Option(..., help="The bundle folder to write (new, or empty); with --tar the archive, "
                                       "NAME.tar.xz (smaller) or NAME.tar.gz."),
    tar: bool = typer.Option(False, "--tar", help="Write one deterministic archive instead of a folder."),
    progress: bool = typer.Option(True, help="Show a progress bar while the archive is compressed (only on a terminal)."),
) -> None:
    """Write what a host needs to sample from ARTIFACT on another machine, and nothing else: a folder or an archive."""
    from .bundle import bundle as write_bundle

    typer.echo("\n".join(write_bundle(check_artifact_path(artifact), host, out, tar=tar, progress=progress)))


def samplers() -> None:
    """List every scheduler and spacing: U-Net calls per image and the sample quality measured (docs/quality.md)."""
    from .measured import sampler_lines

    typer.echo("\n".join(sampler_lines()))
