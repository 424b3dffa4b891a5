"""Reverse-diffusion schedulers in numpy: small objects with `set_timesteps(n)` and `step(eps, t, x, noise)`.

Notation: `abar[t]` is alphas_cumprod of the model's schedule (t = 0 ... T-1). A sampling run visits
timesteps tau_0 > tau_1 > ... > tau_{S-1}; the step at tau_i moves x to the *previous* timestep
tau_{i+1}, and the last step lands on clean data, where abar_prev = 1 (the tutorial's
`t_index == 0`). The model always sees the original integer timesteps it was trained on.

- `DDPMScheduler`: ancestral sampling, the tutorial's `p_sample`. With S < T it is *respaced* DDPM
  (Nichol & Dhariwal 2021, sec. 4): the visited timesteps form a shorter chain whose betas are
  recomputed from the kept alphas_cumprod, beta'_i = 1 - abar[tau_i] / abar[tau_{i+1}], and the
  posterior variance is beta'_i (1 - abar_prev) / (1 - abar_t). At S = T this is the tutorial's chain.
- `DDIMScheduler`: Song et al. 2020, eq. 12; eta = 0 is deterministic, eta = 1 is the DDPM step.
- `DPMSolverPlusPlusScheduler`: DPM-Solver++(2M), Lu et al. 2022 (Algorithm 2): multistep, second
  order, data (x0) prediction; first order on the first and the final step.

Spacing of the S timesteps (`SPACINGS`): `linspace` rounds S evenly spaced points of [0, T-1];
`leading` takes 0, k, 2k, ... with k = T // S (DDIM paper, diffusers' default); `trailing` takes
T-1, T-1-T/S, ... (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
flawed"). The default is `trailing`: it always starts at the last trained timestep, matching x_T ~
N(0, I), which `leading` does not. At S = T all three give T-1 ... 0. DPM-Solver++ in particular
wants `trailing`: `linspace` and `leading` end on t = 0, so the step before is long in log-SNR and
the 2M extrapolation from it overshoots (on a Gaussian toy at 20 steps, std 0.62 for a true 0.5).

`clip_x0=True` clips the predicted x0 to [-1, 1] and re-derives eps from it, so every scheduler
stays consistent with the clipped prediction. Arrays stay float32; coefficients are computed in
float64 and applied as Python floats.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Optional, Tuple

import numpy as np

from .errors import ToolkitError
from .schedules import ScheduleTables

SPACINGS = ("linspace", "leading", "trailing")
DEFAULT_SPACING = "trailing"


def spaced_timesteps(timesteps: int, steps: int, spacing: str = DEFAULT_SPACING) -> np.ndarray:
    """`steps` distinct timesteps of [0, timesteps), in descending (sampling) order."""
    if not 1 <= steps <= timesteps:
        raise ToolkitError(f"steps must be between 1 and T={timesteps}, got {steps}")
    if spacing == "linspace":
        chosen = np.round(np.linspace(0, timesteps - 1, steps))[::-1]
    elif spacing == "leading":
        chosen = (np.arange(steps) * (timesteps // steps))[::-1]
    elif spacing == "trailing":
        chosen = np.round(timesteps - np.arange(steps) * (timesteps / steps)) - 1
    else:
        raise ToolkitError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return chosen.astype(np.int64)


class Scheduler:
    """Shared state: the schedule, the visited timesteps and, per timestep, abar and abar_prev."""

    stochastic = False  # whether `step` takes a fresh z on every step but the last

    def __init__(self, tables: ScheduleTables, spacing: str = DEFAULT_SPACING, clip_x0: bool = False):
        self.tables = tables
        self.spacing = spacing
        self.clip_x0 = clip_x0
        self.timesteps = np.zeros(0, dtype=np.int64)
        self._index: Dict[int, int] = {}

    def set_timesteps(self, steps: int) -> "Scheduler":
        self.timesteps = spaced_timesteps(self.tables.timesteps, steps, self.spacing)
        self._index = {int(t): i for i, t in enumerate(self.timesteps)}
        return self

    def start(self) -> "Scheduler":
        """A copy for one sampling run, its step-to-step state cleared: runs never share state, so one
        Scheduler can serve many runs, one after another or at once from several threads."""
        run = copy.copy(self)
        run.reset()
        return run

    def reset(self) -> None:
        """Forget what a run carries from step to step (nothing, except in multistep schedulers)."""

    @property
    def noise_steps(self) -> int:
        """How many z the run consumes: one per step except the last, if stochastic."""
        return len(self.timesteps) - 1 if self.stochastic else 0

    def _abar(self, t: int) -> Tuple[float, float]:
        """(abar at t, abar at the timestep this step lands on; 1.0 after the last step)."""
        i = self._index.get(int(t))
        if i is None:
            raise ValueError(f"timestep {t} is not one of this run's timesteps (call set_timesteps first)")
        prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else None
        return float(self.tables.alphas_cumprod[t]), 1.0 if prev is None else float(self.tables.alphas_cumprod[prev])

    def _predict(self, eps: np.ndarray, x: np.ndarray, abar: float) -> Tuple[np.ndarray, np.ndarray]:
        """(x0, eps) from the model's eps; with clip_x0, x0 is clipped and eps re-derived from it."""
        x0 = (x - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
        if not self.clip_x0:
            return x0, eps
        x0 = np.clip(x0, -1.0, 1.0)
        return x0, (x - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)

    @staticmethod
    def _require_noise(noise: Optional[np.ndarray]) -> np.ndarray:
        if noise is None:
            raise ValueError("this step is stochastic: pass its noise z")
        return noise

    def step(self, eps: np.ndarray, t: int, x: np.ndarray, noise: Optional[np.ndarray] = None) -> np.ndarray:
        raise NotImplementedError


class DDPMScheduler(Scheduler):
    """The tutorial's p_sample: mean = (x - beta eps / sqrt(1 - abar)) / sqrt(alpha), plus sqrt(posterior var) z."""

    stochastic = True

    def step(self, eps: np.ndarray, t: int, x: np.ndarray, noise: Optional[np.ndarray] = None) -> np.ndarray:
        abar, abar_prev = self._abar(t)
        if self.clip_x0:
            _, eps = self._predict(eps, x, abar)
        alpha = abar / abar_prev  # = 1 - beta'; the tutorial's alpha_t when no timestep is skipped
        beta = 1.0 - alpha
        mean = (x - (beta / math.sqrt(1.0 - abar)) * eps) / math.sqrt(alpha)
        if abar_prev == 1.0:  # the tutorial's t_index == 0: return the mean
            return mean
        variance = beta * (1.0 - abar_prev) / (1.0 - abar)
        return mean + math.sqrt(variance) * self._require_noise(noise)


class DDIMScheduler(Scheduler):
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z (Song et al. eq. 12)."""

    def __init__(self, tables: ScheduleTables, eta: float = 0.0, spacing: str = DEFAULT_SPACING, clip_x0: bool = False):
        if eta < 0:
            raise ToolkitError(f"eta must be >= 0, got {eta}")
        super().__init__(tables, spacing, clip_x0)
        self.eta = eta
        self.stochastic = eta > 0

    def step(self, eps: np.ndarray, t: int, x: np.ndarray, noise: Optional[np.ndarray] = None) -> np.ndarray:
        abar, abar_prev = self._abar(t)
        x0, eps = self._predict(eps, x, abar)
        variance = self.eta**2 * (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)
        direction = math.sqrt(max(1.0 - abar_prev - variance, 0.0))
        x_prev = math.sqrt(abar_prev) * x0 + direction * eps
        if variance == 0.0:
            return x_prev
        return x_prev + math.sqrt(variance) * self._require_noise(noise)


class DPMSolverPlusPlusScheduler(Scheduler):
    """DPM-Solver++(2M) with alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar), lambda_t = log(alpha_t / sigma_t).

    First order: x_prev = (sigma_prev / sigma_t) x - alpha_prev (e^{-h} - 1) x0, with h = lambda_prev - lambda_t.
    Second order: x0 is replaced by D = (1 + 1/(2r)) x0 - 1/(2r) x0_last, r = h_last / h. It keeps the
    last x0 between calls, so steps must come in order; `set_timesteps` and `start` reset it.
    """

    def set_timesteps(self, steps: int) -> "DPMSolverPlusPlusScheduler":
        super().set_timesteps(steps)
        self.reset()
        return self

    def reset(self) -> None:
        self._last: Optional[Tuple[np.ndarray, float]] = None  # (x0, lambda) of the previous step

    def step(self, eps: np.ndarray, t: int, x: np.ndarray, noise: Optional[np.ndarray] = None) -> np.ndarray:
        abar, abar_prev = self._abar(t)
        x0, _ = self._predict(eps, x, abar)
        last, self._last = self._last, (x0, _half_log_snr(abar))
        if abar_prev == 1.0:  # final step, first order: sigma_prev = 0, so x_prev = x0
            return x0
        h = _half_log_snr(abar_prev) - _half_log_snr(abar)
        if last is not None:
            x0_last, lambda_last = last
            half_inverse_r = 0.5 * h / (_half_log_snr(abar) - lambda_last)
            x0 = (1.0 + half_inverse_r) * x0 - half_inverse_r * x0_last
        sigma_ratio = math.sqrt((1.0 - abar_prev) / (1.0 - abar))
        return sigma_ratio * x - math.sqrt(abar_prev) * math.expm1(-h) * x0


def _half_log_snr(abar: float) -> float:
    return 0.5 * math.log(abar / (1.0 - abar))


SCHEDULERS = ("ddpm", "ddim", "dpmpp")
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp": 20}  # None: all T steps


def make_scheduler(name: str, tables: ScheduleTables, steps: Optional[int] = None, *, eta: float = 0.0,
                   spacing: str = DEFAULT_SPACING, clip_x0: bool = False) -> Scheduler:
    """A scheduler by name, with its timesteps set (default steps: T for ddpm, 50 ddim, 20 dpmpp, at most T)."""
    if name not in SCHEDULERS:
        raise ToolkitError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if eta and name != "ddim":
        raise ToolkitError(f"eta applies to the ddim scheduler only, not {name}")
    if name == "ddim":
        scheduler: Scheduler = DDIMScheduler(tables, eta=eta, spacing=spacing, clip_x0=clip_x0)
    elif name == "ddpm":
        scheduler = DDPMScheduler(tables, spacing=spacing, clip_x0=clip_x0)
    else:
        scheduler = DPMSolverPlusPlusScheduler(tables, spacing=spacing, clip_x0=clip_x0)
    if steps is None:
        steps = min(DEFAULT_STEPS[name] or tables.timesteps, tables.timesteps)
    return scheduler.set_timesteps(steps)
