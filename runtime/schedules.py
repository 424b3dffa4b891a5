"""Beta schedules and the tables the tutorial precomputes from them (numpy, float64)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SCHEDULES
from .errors import ToolkitError


def linear_beta_schedule(timesteps: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    """Ho et al. 2020, as in the tutorial."""
    return np.linspace(start, end, timesteps, dtype=np.float64)


def quadratic_beta_schedule(timesteps: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    return np.linspace(start**0.5, end**0.5, timesteps, dtype=np.float64) ** 2


def sigmoid_beta_schedule(timesteps: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    ramp = np.linspace(-6.0, 6.0, timesteps, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-ramp)) * (end - start) + start


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal 2021: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), betas clipped to 0.9999."""
    steps = np.linspace(0, timesteps, timesteps + 1, dtype=np.float64)
    alphas_cumprod = np.cos(((steps / timesteps) + s) / (1 + s) * np.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return np.clip(betas, 1e-4, 0.9999)


_BUILDERS = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "quadratic": quadratic_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}
assert tuple(_BUILDERS) == SCHEDULES


def beta_schedule(name: str, timesteps: int) -> np.ndarray:
    if name not in _BUILDERS:
        raise ToolkitError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return _BUILDERS[name](timesteps)


@dataclass(frozen=True)
class ScheduleTables:
    """Every per-timestep table of the tutorial, derived from the betas alone."""

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_recip_alphas: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    p2_loss_weight: np.ndarray

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    @classmethod
    def from_betas(cls, betas: np.ndarray, p2_gamma: float = 0.0) -> "ScheduleTables":
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2 or not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas >= 1):
            raise ToolkitError("betas must be a 1-D array of at least 2 values in (0, 1)")
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
        return cls(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_recip_alphas=np.sqrt(1.0 / alphas),
            sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
            posterior_variance=betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            # The tutorial's p2 weighting with gamma = 0 (all ones); kept for completeness.
            p2_loss_weight=(1.0 + alphas_cumprod / (1.0 - alphas_cumprod)) ** -p2_gamma,
        )

    @classmethod
    def from_name(cls, name: str, timesteps: int) -> "ScheduleTables":
        return cls.from_betas(beta_schedule(name, timesteps))
