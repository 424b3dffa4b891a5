"""The one configuration object: model shape, noise schedule and training settings.

Saved as JSON beside every checkpoint and inside every export's manifest. Pure Python, so
the runtime can read it without MindSpore.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from .errors import ToolkitError

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")
LOSSES = ("huber", "l2")


@dataclass(frozen=True)
class ModelConfig:
    """The tutorial's `Unet(dim, init_dim, out_dim, dim_mults, channels, with_time_emb, convnext_mult)`."""

    image_size: int = 28
    channels: int = 1
    dim: int = 28
    init_dim: Optional[int] = None
    out_dim: Optional[int] = None
    dim_mults: Tuple[int, ...] = (1, 2, 4)
    with_time_emb: bool = True
    convnext_mult: int = 2

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.dim_mults) - 1)

    def validate(self) -> None:
        optional_sizes = [size for size in (self.init_dim, self.out_dim) if size is not None]
        if self.image_size < 1 or self.channels < 1 or self.dim < 2 or not self.dim_mults \
                or min((*self.dim_mults, self.convnext_mult, *optional_sizes)) < 1:
            raise ToolkitError(f"invalid model config: {self}")
        if self.image_size % self.downsample_factor:
            raise ToolkitError(
                f"image size {self.image_size} is not divisible by {self.downsample_factor} "
                f"(2^(len(dim_mults)-1) for dim_mults={list(self.dim_mults)})"
            )


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward-process schedule (the tutorial: linear betas 1e-4..0.02, T=200) and training loss."""

    schedule: str = "linear"
    timesteps: int = 200
    loss: str = "huber"

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ToolkitError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.loss not in LOSSES:
            raise ToolkitError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.timesteps < 2:
            raise ToolkitError(f"timesteps must be >= 2, got {self.timesteps}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the tutorial: Adam, cosine-decay LR 1e-4 -> 1e-7, batch 16)."""

    data: str = "digits"
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-6
    hflip: bool = True
    ema_decay: Optional[float] = None
    grad_clip: float = 1.0
    loss_scale: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 0
    log_every: int = 50

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ToolkitError("steps and batch size must be >= 1")
        if not (0 < self.lr < math.inf and 0 <= self.min_lr < math.inf):
            raise ToolkitError(f"learning rates must be finite, lr > 0 and min_lr >= 0, got {self.lr} and {self.min_lr}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ToolkitError(f"EMA decay must be in (0, 1), got {self.ema_decay}")
        if min(self.checkpoint_every, self.log_every) < 1 or self.sample_every < 0:
            raise ToolkitError("checkpoint and log intervals must be >= 1 and the sample interval >= 0")
        if not self.grad_clip > 0:
            raise ToolkitError(f"the gradient clipping norm must be positive, got {self.grad_clip}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.diffusion.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "Config":
        """Build from a dict, rejecting unknown keys and wrong types with a clear message."""
        if not isinstance(data, dict):
            raise ToolkitError("config must be a JSON object")
        sections = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}
        unknown = set(data) - set(sections)
        if unknown:
            raise ToolkitError(f"unknown config section(s): {', '.join(map(repr, sorted(unknown)))}")
        return cls(**{name: _section(kind, data.get(name, {}), name) for name, kind in sections.items()}).validate()

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(parse_json(text, "config"))


def parse_json(text: str, what: str) -> Any:
    """`json.loads`, with every failure (nesting too deep included) a one-line ToolkitError about `what`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except RecursionError as exc:
        raise ToolkitError(f"{what} is not valid JSON (nested too deeply)") from exc


def _section(kind: type, values: Any, name: str) -> Any:
    if not isinstance(values, dict):
        raise ToolkitError(f"config section {name!r} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ToolkitError(f"unknown key(s) in config section {name!r}: {', '.join(map(repr, sorted(unknown)))}")
    defaults = kind()
    out = {}
    for key, value in values.items():
        expected = getattr(defaults, key)
        out[key] = _coerce(value, expected, f"{name}.{key}")
    return kind(**out)


def _coerce(value: Any, example: Any, where: str) -> Any:
    """Check a JSON value against the type of the field's default; lists become tuples."""
    if isinstance(example, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ToolkitError(f"config {where} must be a list of integers, got {value!r}")
        return tuple(value)
    if value is None:
        if example is not None:
            raise ToolkitError(f"config {where} must not be null")
        return None
    if isinstance(example, bool) or example is None and isinstance(value, bool):
        if not isinstance(value, bool):
            raise ToolkitError(f"config {where} must be true or false, got {value!r}")
        return value
    if isinstance(example, int) or (example is None and isinstance(value, int)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ToolkitError(f"config {where} must be an integer, got {value!r}")
        return value
    if isinstance(example, float) or example is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ToolkitError(f"config {where} must be a number, got {value!r}")
        if isinstance(value, int) and not abs(value) < 2**1023:  # float() would overflow
            raise ToolkitError(f"config {where} is out of range")
        return float(value)
    if isinstance(example, str):
        if not isinstance(value, str):
            raise ToolkitError(f"config {where} must be a string, got {value!r}")
        return value
    raise ToolkitError(f"config {where}: unsupported value {value!r}")
