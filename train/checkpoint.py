"""Checkpoints: one MindSpore .ckpt holding weights, EMA weights, optimizer state, step and config.

The config is embedded (key `config_json`) so a lone .ckpt is self-describing, and also written as
`config.json` beside it for people. Every write is atomic: temp file, then rename.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from . import prepare_mindspore
prepare_mindspore()  # before MindSpore loads: oneDNN ISA cap, quiet logs
import mindspore as ms
from mindspore import Tensor, nn

from ..runtime.config import Config
from ..runtime.errors import ToolkitError, first_line
from ..runtime.files import atomic_path, write_text_atomic

from .model import Unet, build_unet
from .run_paths import resolve_checkpoint_path

CONFIG_KEY = "config_json"
STEP_KEY = "step"
EMA_PREFIX = "ema."
OPT_PREFIX = "opt."


@dataclass
class Checkpoint:
    """What a .ckpt file holds, as numpy arrays."""

    config: Config
    step: int
    weights: Dict[str, np.ndarray]
    ema_weights: Dict[str, np.ndarray]
    optimizer_state: Dict[str, np.ndarray]
    path: Path

    def inference_weights(self) -> Dict[str, np.ndarray]:
        """EMA weights when the run kept them (better samples), else the raw weights."""
        return self.ema_weights or self.weights


def save_checkpoint(path: Path, config: Config, step: int, net: nn.Cell,
                    ema_params: Optional[list] = None, optimizer: Optional[nn.Optimizer] = None) -> Path:
    """Atomically write weights (+ EMA, + optimizer state) and the config; also write config.json beside it."""
    entries = [{"name": p.name, "data": p} for p in net.trainable_params()]
    entries += [{"name": p.name, "data": p} for p in ema_params or []]
    if optimizer is not None:
        entries += [{"name": OPT_PREFIX + p.name, "data": p} for p in optimizer_state(optimizer, net)]
    with atomic_path(path, suffix=".ckpt") as tmp:
        ms.save_checkpoint(entries, str(tmp), append_dict={CONFIG_KEY: config.to_json(), STEP_KEY: int(step)})
    write_text_atomic(Path(path).parent / "config.json", config.to_json() + "\n")
    return Path(path)


def optimizer_state(optimizer: nn.Optimizer, net: nn.Cell) -> list:
    """The optimizer's own parameters (Adam moments, step, beta powers), minus the model weights and
    the learning-rate table, which is rebuilt from the config."""
    weights = {p.name for p in net.trainable_params()}
    return [p for p in optimizer.get_parameters() if p.name not in weights and p.name != "learning_rate"]


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint; every failure is a one-line ToolkitError naming the file."""
    path = resolve_checkpoint_path(path)
    try:
        raw = ms.load_checkpoint(str(path))
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with long text
        raise ToolkitError(f"corrupt or unreadable checkpoint: {path} ({first_line(exc)})") from exc
    if CONFIG_KEY not in raw:
        raise ToolkitError(f"checkpoint has no embedded config (not written by this toolkit?): {path}")
    config = Config.from_json(raw.pop(CONFIG_KEY))
    step = int(raw.pop(STEP_KEY).asnumpy()) if STEP_KEY in raw else 0
    arrays = {name: value.asnumpy() for name, value in raw.items() if hasattr(value, "asnumpy")}
    checkpoint = Checkpoint(
        config=config,
        step=step,
        weights={k: v for k, v in arrays.items() if not k.startswith((EMA_PREFIX, OPT_PREFIX))},
        ema_weights={k[len(EMA_PREFIX):]: v for k, v in arrays.items() if k.startswith(EMA_PREFIX)},
        optimizer_state={k[len(OPT_PREFIX):]: v for k, v in arrays.items() if k.startswith(OPT_PREFIX)},
        path=path,
    )
    for name, value in arrays.items():  # weights, EMA and optimizer state: resuming uses all of them
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ToolkitError(f"checkpoint tensor {name} contains NaN or Inf: {path}")
    return checkpoint


def load_weights_into(net: nn.Cell, weights: Dict[str, np.ndarray], source: Path) -> None:
    """Copy weights into `net`, failing clearly on any missing, extra or mis-shaped parameter."""
    params = {p.name: p for p in net.trainable_params()}
    missing = sorted(set(params) - set(weights))
    extra = sorted(set(weights) - set(params))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise ToolkitError(f"checkpoint does not match the model config ({detail}): {source}")
    for name, param in params.items():
        if tuple(weights[name].shape) != tuple(param.shape):
            raise ToolkitError(
                f"checkpoint does not match the model config ({name}: {weights[name].shape} vs {tuple(param.shape)}): {source}"
            )
        param.set_data(Tensor(weights[name], param.dtype))


def load_model(path: str | Path) -> tuple[Unet, Checkpoint]:
    """Build the U-Net from the checkpoint's own config and load its inference weights (EMA if kept)."""
    checkpoint = load_checkpoint(path)
    net = build_unet(checkpoint.config.model)
    load_weights_into(net, checkpoint.inference_weights(), checkpoint.path)
    net.set_train(False)
    return net, checkpoint

