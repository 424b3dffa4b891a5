"""CLI commands of the training module: `train`, `noise`, and the MindSpore reference path of `sample`.

Imported by the CLI (cli.py) at start-up, so MindSpore is imported inside the functions only.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import typer

from ..runtime.config import Config, DiffusionConfig, ModelConfig, TrainConfig
from ..runtime.errors import ToolkitError, check_minimum
from ..runtime.files import check_output_dir
from ..runtime.images import check_outputs, save_grid, save_samples, to_uint8
from ..runtime.progress import progress_bar

from . import prepare_mindspore, require_extra
from .launch import launch_workers, msrun_worker_count
from .run_paths import LATEST, resolve_checkpoint_path


def _parse_mults(text: Optional[str]) -> Optional[tuple]:
    if text is None:
        return None
    try:
        mults = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise ToolkitError(f"--dim-mults must be comma-separated integers like 1,2,4, got {text!r}") from exc
    if not mults or min(mults) < 1:
        raise ToolkitError(f"--dim-mults must be positive integers, got {text!r}")
    return mults


def _with_overrides(config: Config, overrides: Dict[str, Dict[str, Any]]) -> Config:
    """Replace the given (non-None) fields in each section."""
    sections = {name: dataclasses.replace(getattr(config, name), **{k: v for k, v in values.items() if v is not None})
                for name, values in overrides.items()}
    return dataclasses.replace(config, **sections).validate()


def train(
    data: Optional[str] = typer.Option(None, help="'digits' (embedded scikit-learn digits, the default), a folder of images, "
                                                   "IDX file(s) such as Fashion-MNIST's train-images-idx3-ubyte[.gz], or an .npz."),
    out: Path = typer.Option(Path("runs/default"), help="Run directory: checkpoints/ (latest.ckpt and config.json), "
                                                         "train_log.jsonl, samples/ (with --sample-every)."),
    image_size: Optional[int] = typer.Option(None, help="Training resolution (default 28, the tutorial's)."),
    channels: Optional[int] = typer.Option(None, help="1 (grey, default) or 3 (RGB)."),
    dim: Optional[int] = typer.Option(None, help="U-Net base width (default 28, the tutorial's)."),
    dim_mults: Optional[str] = typer.Option(None, help="Width multipliers per resolution (default 1,2,4)."),
    schedule: Optional[str] = typer.Option(None, help="Beta schedule: linear (default) | cosine | quadratic | sigmoid."),
    timesteps: Optional[int] = typer.Option(None, help="Diffusion steps T (default 200, the tutorial's)."),
    loss: Optional[str] = typer.Option(None, help="huber (default, the tutorial's) | l2."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default 2000). With --resume, raise it to train longer."),
    epochs: Optional[int] = typer.Option(None, help="Train this many epochs instead of --steps (an epoch: dataset size / "
                                                    "batch size steps, as the tutorial counts them)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 16, the tutorial's)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate of the cosine decay (default 1e-3)."),
    hflip: Optional[bool] = typer.Option(None, "--hflip/--no-hflip", help="Random horizontal flips (default on, as in the "
                                                                          "tutorial; turn off for digits and text)."),
    ema: Optional[float] = typer.Option(None, help="Keep an EMA of the weights with this decay (e.g. 0.995); used for sampling/export."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip gradients to this global norm (default 1.0)."),
    loss_scale: Optional[bool] = typer.Option(None, "--loss-scale/--no-loss-scale", help="Use the tutorial's DynamicLossScaler (default off in fp32)."),
    seed: Optional[int] = typer.Option(None, help="Seed for init, batches, t and noise (default 0)."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Write checkpoints/latest.ckpt every N steps (default 500)."),
    sample_every: Optional[int] = typer.Option(None, help="Write a sample grid samples/step-N.png every N steps (default 0: none)."),
    log_every: Optional[int] = typer.Option(None, help="Append the loss to train_log.jsonl every N steps (default 50)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint (its config is reused)."),
    progress: bool = typer.Option(True, help="Show a progress bar (only ever on a terminal)."),
    workers: Optional[int] = typer.Option(None, help="Train data-parallel on N workers on this machine, launched with "
                                                     "MindSpore's msrun; each takes batch-size/N images of every batch."),
    master_port: int = typer.Option(8118, help="Port of msrun's scheduler, with --workers."),
    distributed: bool = typer.Option(False, "--distributed", help="Run as one data-parallel worker of an msrun job "
                                                                 "(`msrun ... cli.py train --distributed ...`; --workers adds it)."),
) -> None:
    """Train the tutorial's U-Net noise predictor with MindSpore and write checkpoints into the run directory.

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes the checkpoint and exits 130 / 143;
    `--resume` continues exactly where it stopped.
    """
    require_extra("train", "mindspore")
    if steps is not None and epochs is not None:
        raise ToolkitError("--steps and --epochs are alternatives: give one")
    check_minimum("--epochs", epochs)
    if distributed:
        msrun_worker_count()  # fails unless msrun started this process, before the run directory is touched
    overrides = {
        "model": dict(image_size=image_size, channels=channels, dim=dim, dim_mults=_parse_mults(dim_mults)),
        "diffusion": dict(schedule=schedule, timesteps=timesteps, loss=loss),
        "train": dict(data=data, steps=steps, batch_size=batch_size, lr=lr, hflip=hflip, ema_decay=ema, grad_clip=grad_clip,
                      loss_scale=loss_scale, seed=seed, checkpoint_every=checkpoint_every, sample_every=sample_every,
                      log_every=log_every),
    }
    config = _resume_config(out, overrides) if resume else _new_run_config(out, overrides)
    if workers is not None:
        return launch_workers(workers, master_port, out, config.train.batch_size, sys.argv)
    from .data import load_images, to_model_range

    images = load_images(config.train.data, config.model.image_size, config.model.channels)  # before MindSpore loads
    prepare_mindspore()
    from .distributed import DistributedContext, join_msrun_cluster
    from .trainer import batches_per_epoch, train as run_training

    if epochs is not None:
        steps = epochs * batches_per_epoch(len(images), config.train.batch_size)
        config = _with_overrides(config, {"train": {"steps": steps}})

    context = join_msrun_cluster(config.train.batch_size) if distributed else DistributedContext()
    result = run_training(config, to_model_range(images), out, resume=resume, show_progress=progress, context=context)
    if result.stopped_by is not None:
        typer.echo(f"interrupted at step {result.step}; checkpoint written; continue with --resume", err=True)
        raise typer.Exit(128 + result.stopped_by)
    if context.is_main:
        typer.echo(f"trained {result.steps_run} steps in {result.seconds:.1f} s; loss {result.first_loss:.4f} -> "
                   f"{result.last_loss:.4f}; checkpoint: {result.checkpoint}")


def _new_run_config(out: Path, overrides: Dict[str, Dict[str, Any]]) -> Config:
    if (out / "checkpoints" / LATEST).exists():
        raise ToolkitError(f"run directory already holds a checkpoint: {out} (use --resume, or another --out)")
    _check_run_dir(out)
    return _with_overrides(Config(ModelConfig(), DiffusionConfig(), TrainConfig()), overrides)


def _check_run_dir(out: Path) -> None:
    """`out` may not exist yet (training creates it, with its parents): its nearest existing
    ancestor must be a directory we can write in."""
    existing = next(path for path in (out, *out.parents) if path.exists())
    check_output_dir(existing / "config.json")


def _resume_config(out: Path, overrides: Dict[str, Dict[str, Any]]) -> Config:
    """The run's own config; only --steps (and --progress) may change on resume."""
    latest = resolve_checkpoint_path(out / "checkpoints" / LATEST)  # before MindSpore loads
    from .checkpoint import load_checkpoint

    config = load_checkpoint(latest).config
    given = [f"--{key.replace('_', '-')}" for section in overrides.values() for key, value in section.items()
             if value is not None and key != "steps"]
    if given:
        raise ToolkitError(f"--resume reuses the run's config; conflicting flag(s): {', '.join(given)}")
    return _with_overrides(config, {"train": {"steps": overrides["train"]["steps"]}})


def sample_reference(checkpoint: Path, n: int, seed: int, out: Path, gif: Optional[Path], npz: Optional[Path],
                     progress: bool = True) -> None:
    """The tutorial's ancestral DDPM sampler in MindSpore (compiled), from a checkpoint."""
    require_extra("train", "mindspore")
    checkpoint = resolve_checkpoint_path(checkpoint)
    check_outputs(out, gif, npz)
    from ..runtime.schedules import ScheduleTables

    from .checkpoint import load_model
    from .diffusion import draw_sampling_noise, reference_sample

    net, loaded = load_model(checkpoint)
    model = loaded.config.model
    tables = ScheduleTables.from_name(loaded.config.diffusion.schedule, loaded.config.diffusion.timesteps)
    x_T, step_noise = draw_sampling_noise(seed, (n, model.channels, model.image_size, model.image_size),
                                          tables.timesteps)
    frames: List[np.ndarray] = []
    with progress_bar(progress, total=tables.timesteps, desc="sample (MindSpore reference DDPM)") as bar:
        def on_step(t: int, x: np.ndarray) -> None:
            bar.update(1)
            if gif is not None:
                frames.append(to_uint8(x))

        images = to_uint8(reference_sample(net, tables, x_T, step_noise, on_step=on_step))
    written = save_samples(out, images, gif, frames, npz)
    typer.echo(f"wrote {', '.join(map(str, written))} ({n} images, step {loaded.step} of {loaded.path})")


def noise(
    image: Path = typer.Argument(..., help="An image file (png/jpg)."),
    t: str = typer.Option("0,50,100,150,199", help="Comma-separated timesteps to show."),
    out: Path = typer.Option(Path("noise.png"), help="The strip to write: .png, .jpg or .webp."),
    image_size: int = typer.Option(128, help="Resize and centre-crop to this size (the tutorial uses 128)."),
    schedule: str = typer.Option("linear", help="Beta schedule: linear | cosine | quadratic | sigmoid."),
    timesteps: int = typer.Option(200, help="Diffusion steps T."),
    seed: int = typer.Option(0, help="Noise seed."),
) -> None:
    """The tutorial's forward-diffusion picture: IMAGE noised by q(x_t | x_0) at several t, side by side."""
    require_extra("train", "mindspore")
    try:
        steps = [int(value) for value in t.split(",")]
    except ValueError as exc:
        raise ToolkitError(f"--t must be comma-separated integers, got {t!r}") from exc
    if min(steps) < 0 or max(steps) >= timesteps:
        raise ToolkitError(f"--t values must lie in 0..{timesteps - 1}, got {t}")
    check_outputs(out)
    from PIL import Image, UnidentifiedImageError

    from .data import resize_and_crop, to_model_range

    try:
        with Image.open(image) as picture:
            array = resize_and_crop(picture.convert("RGB"), image_size)
    except FileNotFoundError as exc:
        raise ToolkitError(f"image not found: {image}") from exc
    except (OSError, UnidentifiedImageError) as exc:
        raise ToolkitError(f"cannot read image {image}: {exc}") from exc
    x0 = np.repeat(to_model_range(array[None]), len(steps), axis=0)
    noised = _q_sample(x0, np.asarray(steps, np.int32), schedule, timesteps, seed)
    save_grid(out, to_uint8(noised), scale=1, columns=len(steps))
    typer.echo(f"wrote {out} (t = {', '.join(map(str, steps))})")


def _q_sample(x0: np.ndarray, t: np.ndarray, schedule: str, timesteps: int, seed: int) -> np.ndarray:
    prepare_mindspore()
    from mindspore import Tensor

    from ..runtime.schedules import ScheduleTables

    from .diffusion import ForwardProcess

    forward = ForwardProcess(ScheduleTables.from_name(schedule, timesteps))
    noise_array = np.random.default_rng(seed).standard_normal(x0.shape, dtype=np.float32)
    return forward.q_sample(Tensor(x0), Tensor(t), Tensor(noise_array)).asnumpy()
