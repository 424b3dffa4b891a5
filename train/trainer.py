"""The training loop: Adam with the tutorial's cosine-decay LR, Huber loss on random t, random
horizontal flips, gradient clipping, optional EMA and loss scaling, a graph-mode (jit) step,
atomic checkpoints every N steps and `--resume`.

Randomness is drawn per step from numpy's Generator([seed, step]) and per epoch from
Generator([seed, epoch]), so a resumed run sees exactly the batches the uninterrupted run would.
Under msrun (train/distributed.py) each worker trains on its slice of that same global batch.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, TextIO

import numpy as np
from tqdm import tqdm

from . import prepare_mindspore
prepare_mindspore()  # before MindSpore loads: oneDNN ISA cap, quiet logs
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.amp import DynamicLossScaler, all_finite

from ..runtime.config import Config
from ..runtime.errors import ToolkitError
from ..runtime.files import write_text_atomic
from ..runtime.images import save_grid, to_uint8
from ..runtime.progress import progress_bar
from ..runtime.schedules import ScheduleTables

from .checkpoint import EMA_PREFIX, load_checkpoint, load_weights_into, optimizer_state, save_checkpoint
from .diffusion import ForwardProcess, draw_sampling_noise, reference_sample
from .distributed import DistributedContext, GradientMean, write_rank_weights
from .model import build_unet, count_parameters
from .run_paths import LATEST

MAX_NONFINITE_STEPS = 10
PROGRESS_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, ETA {remaining}, {rate_noinv_fmt}{postfix}]"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class TrainResult:
    checkpoint: Path
    first_loss: float
    last_loss: float
    steps_run: int
    seconds: float
    step: int  # the step reached, that of the checkpoint written last
    stopped_by: Optional[int] = None  # the signal (SIGINT, SIGTERM) that stopped training early


def batches_per_epoch(images: int, batch_size: int) -> int:
    """Steps in one epoch: the dataset's full batches (at least one)."""
    return max(1, images // batch_size)


class BatchSampler:
    """Epoch-shuffled batches with random flips, reproducible from (seed, step) alone."""

    def __init__(self, images: np.ndarray, config: Config):
        self.images = images  # float32 (N, C, H, W) on [-1, 1]
        self.config = config
        self.batches_per_epoch = batches_per_epoch(len(images), config.train.batch_size)
        self._epoch, self._order = -1, np.arange(len(images))

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x_0, t and noise for one step."""
        train = self.config.train
        epoch, position = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([train.seed, epoch]).permutation(len(self.images))
        index = self._order[np.arange(position * train.batch_size, (position + 1) * train.batch_size) % len(self.images)]
        rng = np.random.default_rng([train.seed, step, 1])
        x0 = self.images[index]
        if train.hflip:
            flip = rng.random(len(x0)) < 0.5
            x0 = np.where(flip[:, None, None, None], x0[..., ::-1], x0)
        t = rng.integers(0, self.config.diffusion.timesteps, size=len(x0), dtype=np.int32)
        noise = rng.standard_normal(x0.shape, dtype=np.float32)
        return np.ascontiguousarray(x0, dtype=np.float32), t, noise


def cosine_lr(config: Config) -> List[float]:
    """The tutorial's `nn.cosine_decay_lr` from lr to min_lr over all steps."""
    train = config.train
    return nn.cosine_decay_lr(min_lr=train.min_lr, max_lr=train.lr, total_step=train.steps,
                              step_per_epoch=1, decay_epoch=train.steps)


class TrainStep:
    """One jit-compiled optimisation step; skips the update (and reports it) when loss or grads are not finite."""

    def __init__(self, net: nn.Cell, config: Config, context: DistributedContext = DistributedContext()):
        self.net = net
        self.forward = ForwardProcess(ScheduleTables.from_name(config.diffusion.schedule, config.diffusion.timesteps),
                                      loss=config.diffusion.loss)
        self.optimizer = nn.Adam(net.trainable_params(), learning_rate=cosine_lr(config))
        self.grad_clip = config.train.grad_clip
        self.scaler = DynamicLossScaler(65536, 2, 1000) if config.train.loss_scale else None
        self.ema_decay = config.train.ema_decay
        self.params = ms.ParameterTuple(net.trainable_params())
        self.ema_params = ms.ParameterTuple([Parameter(p.data.copy(), name=EMA_PREFIX + p.name, requires_grad=False)
                                             for p in self.params] if self.ema_decay else [])
        self.grad_fn = ms.value_and_grad(self._loss, None, self.optimizer.parameters)
        self.reducer = GradientMean(self.optimizer.parameters, context.world_size) if context.is_distributed else None
        self.step = ms.jit(self._step)

    def _loss(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        loss = self.forward.p_losses(self.net, x0, t, noise)
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def _step(self, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        loss, grads = self.grad_fn(x0, t, noise)
        if self.scaler is not None:
            loss, grads = self.scaler.unscale(loss), self.scaler.unscale(grads)
        if self.reducer is not None:
            loss, grads = self.reducer(loss, grads)
        finite = ops.logical_and(all_finite(grads), ops.isfinite(loss))
        if self.scaler is not None:
            self.scaler.adjust(finite)
        if finite:
            grads = ops.clip_by_global_norm(grads, self.grad_clip)
            self.optimizer(grads)
            for ema, param in zip(self.ema_params, self.params):
                ops.assign(ema, ema * self.ema_decay + param * (1.0 - self.ema_decay))
        return loss, finite


def write_progress_samples(path: Path, trainer: TrainStep, config: Config, n: int = 16) -> None:
    """A grid from the current weights (EMA if kept) by the reference sampler, with a fixed seed."""
    eval_net = build_unet(config.model)
    weights = trainer.ema_params if trainer.ema_params else trainer.params
    for target, source in zip(eval_net.trainable_params(), weights):
        target.set_data(source.value().copy())
    eval_net.set_train(False)
    tables = ScheduleTables.from_name(config.diffusion.schedule, config.diffusion.timesteps)
    shape = (n, config.model.channels, config.model.image_size, config.model.image_size)
    x_T, step_noise = draw_sampling_noise(config.train.seed, shape, tables.timesteps)
    path.parent.mkdir(exist_ok=True)
    save_grid(path, to_uint8(reference_sample(eval_net, tables, x_T, step_noise)))


def load_resume_state(path: Path, step: TrainStep) -> int:
    """Restore weights, EMA and optimizer state from a checkpoint; return its step."""
    checkpoint = load_checkpoint(path)
    load_weights_into(step.net, checkpoint.weights, checkpoint.path)
    for target, source in ((step.ema_params, checkpoint.ema_weights),
                           (optimizer_state(step.optimizer, step.net), checkpoint.optimizer_state)):
        for param in target:
            name = param.name[len(EMA_PREFIX):] if param.name.startswith(EMA_PREFIX) else param.name
            if name not in source:
                raise ToolkitError(f"checkpoint lacks training state {param.name!r} needed to resume: {path}")
            param.set_data(Tensor(source[name], param.dtype))
    return checkpoint.step


def open_log(path: Path, start: int) -> TextIO:
    """The training log (JSON lines), cut to the records of steps <= `start` and opened for appending.

    `start` is the step of the checkpoint training resumes from (0 for a new run), so steps redone
    after a crash are not logged twice, and a line torn by the crash is dropped.
    """
    if path.exists():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        write_text_atomic(path, "".join(line for line in lines if _logged_step(line) <= start))
    return path.open("a", encoding="utf-8")


def _logged_step(line: str) -> float:
    """The step of one complete log line; infinity for a torn or foreign one."""
    try:
        step = json.loads(line)["step"] if line.endswith("\n") else None
    except (ValueError, KeyError, TypeError):
        return math.inf
    return step if isinstance(step, int) else math.inf


class StopSignals:
    """While training, SIGINT and SIGTERM are recorded in `received` instead of stopping the process, so
    the loop can finish its step and write a checkpoint. Off in msrun workers (`enabled=False`): a worker
    that stopped alone would leave the others waiting in the next all-reduce.

    MindSpore installs its own SIGINT handler whenever a compiled graph runs, one that sends SIGTERM to the
    process: `rearm()` after each step takes SIGINT back, so only a Ctrl-C that lands inside a step arrives
    as SIGTERM.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: List[int] = []
        self._previous = {}

    def _record(self, signum: int, frame: object) -> None:
        self.received.append(signum)

    def rearm(self) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._record)

    def __enter__(self) -> "StopSignals":
        if self.enabled:
            self._previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
            for number in STOP_SIGNALS:
                signal.signal(number, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def train(config: Config, images: np.ndarray, run_dir: Path, resume: bool = False, show_progress: bool = True,
          context: DistributedContext = DistributedContext()) -> TrainResult:
    """Train (or resume) and write `run_dir/checkpoints/latest.ckpt`; returns the losses seen.

    With a distributed `context` this process is one msrun worker: it trains on its slice of each
    batch, and only rank 0 writes the checkpoint and the log. On SIGINT/SIGTERM (one process only) the
    current step finishes, the checkpoint is written and the result names the signal.
    """
    config.validate()
    ms.set_seed(config.train.seed)
    net = build_unet(config.model)
    trainer = TrainStep(net, config, context)
    checkpoint_path = run_dir / "checkpoints" / LATEST
    start = load_resume_state(checkpoint_path, trainer) if resume else 0
    if start >= config.train.steps:
        raise ToolkitError(f"run already finished {start} of {config.train.steps} steps; raise --steps to continue")
    sampler = BatchSampler(images, config)
    log = None
    if context.is_main:
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        log = open_log(run_dir / "train_log.jsonl", start)
        tqdm.write(f"model: {count_parameters(net):,} parameters; data: {len(images):,} images; {prepare_mindspore()}")
        if context.is_distributed:
            tqdm.write(f"data parallel: {context.world_size} workers, {config.train.batch_size // context.world_size} "
                       f"images each of every batch of {config.train.batch_size}")
        if resume:
            tqdm.write(f"resuming from step {start}: {checkpoint_path}")

    losses: List[float] = []
    nonfinite_run = 0
    began = time.perf_counter()
    progress = progress_bar(show_progress and context.is_main, iterable=range(start, config.train.steps), initial=start,
                            total=config.train.steps, desc="train", unit="step",
                            bar_format=PROGRESS_FORMAT)
    with StopSignals(enabled=not context.is_distributed) as stop:
        for step in progress:
            x0, t, noise = context.shard(*sampler.batch(step))
            loss, finite = trainer.step(Tensor(x0), Tensor(t), Tensor(noise))
            loss_value = float(loss.asnumpy())
            nonfinite_run = 0 if bool(finite.asnumpy()) else nonfinite_run + 1
            if nonfinite_run >= MAX_NONFINITE_STEPS:
                raise ToolkitError(f"loss was not finite for {MAX_NONFINITE_STEPS} consecutive steps (step {step + 1}); "
                                   f"last good checkpoint kept: {checkpoint_path}")
            stop.rearm()
            losses.append(loss_value)
            done = step + 1
            if log is not None and (done % config.train.log_every == 0 or done == config.train.steps):
                progress.set_postfix(loss=f"{np.mean(losses[-config.train.log_every:]):.4f}")
                log.write(json.dumps({"step": done, "loss": loss_value, "time": round(time.perf_counter() - began, 3)}) + "\n")
                log.flush()
            if context.is_main and (done % config.train.checkpoint_every == 0 or done == config.train.steps or stop.received):
                save_checkpoint(checkpoint_path, config, done, net, trainer.ema_params, trainer.optimizer)
            if stop.received:
                break
            if context.is_main and config.train.sample_every and done % config.train.sample_every == 0:
                write_progress_samples(run_dir / "samples" / f"step-{done:06d}.png", trainer, config)
    progress.close()
    if log is not None:
        log.close()
    write_rank_weights(net, context)
    return TrainResult(checkpoint=checkpoint_path, first_loss=losses[0], last_loss=losses[-1],
                       steps_run=len(losses), seconds=time.perf_counter() - began,
                       step=start + len(losses), stopped_by=stop.received[0] if stop.received else None)
