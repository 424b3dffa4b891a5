"""Reverse-diffusion schedulers in numpy: small objects with `set_timesteps(n)` and `step(eps, t, x, noise)`,
each defined by a table of per-step weights.

Notation: `abar[t]` is alphas_cumprod of the model's schedule (t = 0 ... T-1). A sampling run visits
timesteps tau_0 > tau_1 > ... > tau_{S-1}; the step at tau_i moves x to the *previous* timestep
tau_{i+1}, and the last step lands on clean data, where abar_prev = 1 (the tutorial's
`t_index == 0`). The model always sees the original integer timesteps it was trained on.

Every step is linear in (x, eps, x0, the previous steps' x0, z) once its weights are known. A
scheduler's `table()` (a `StepTable`) holds them, one row per step, columns `STEP_COLUMNS`, and
`apply_step` applies a row; it is the only place the step arithmetic lives: `Scheduler.step` calls it,
and an exporter that puts the sampler step into the graph bakes in the same table. Step i, w = weights[i]:

    x0 = (x - w[sqrt_one_minus_abar] eps) / w[sqrt_abar]     (clip_x0: clipped to [-1, 1], eps re-derived)
    x_next = w[x] x + w[eps] eps + w[x0] x0 + w[x0_prev1] x0_prev1 + w[x0_prev2] x0_prev2 + w[z] z

and the step's x0 becomes the next step's x0_prev1. Each scheduler only derives its rows:

- `DDPMScheduler` (`ddpm`): ancestral sampling, the tutorial's `p_sample`. With S < T it is *respaced*
  DDPM (Nichol & Dhariwal 2021, sec. 4): the visited timesteps form a shorter chain whose betas are
  recomputed from the kept alphas_cumprod, beta'_i = 1 - abar[tau_i] / abar[tau_{i+1}], and the
  posterior variance is beta'_i (1 - abar_prev) / (1 - abar_t). At S = T this is the tutorial's chain.
- `DDIMScheduler` (`ddim`): Song et al. 2020, eq. 12; eta = 0 is deterministic, eta = 1 is the DDPM step.
- `DPMSolverPlusPlusScheduler` (`dpmpp`): DPM-Solver++(2M), Lu et al. 2022 (Algorithm 2): multistep,
  second order, data (x0) prediction; first order on the first and the final step.
- `DPMSolverPlusPlusSDEScheduler` (`dpmpp-sde`): SDE-DPM-Solver++(2M), the same multistep scheme for
  the reverse diffusion SDE (diffusers' `sde-dpmsolver++`); stochastic, its first order step is DDPM's.
- `DPMSolverPlusPlus3MScheduler` (`dpmpp3m`): DPM-Solver++(3M), third order multistep (diffusers'
  `solver_order=3`, with the second-derivative term diffusers halves restored: see the class); lower
  orders on the first two steps and at the end.

Spacing of the S timesteps (`SPACINGS`): `linspace` rounds S evenly spaced points of [0, T-1];
`leading` takes 0, k, 2k, ... with k = T // S (DDIM paper, diffusers' default); `trailing` takes
T-1, T-1-T/S, ... (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
flawed"); `logsnr` and `karras` follow the noise level instead of the index, from T-1 down to 0:
evenly spaced in log-SNR (DPM-Solver's `logSNR` spacing), or in sigma^(1/7) with sigma =
sqrt((1 - abar) / abar) (Karras et al. 2022, eq. 5, rho = 7), each rounded to the nearest timestep.
The default is `trailing`: it always starts at the last trained timestep, matching x_T ~ N(0, I),
which `leading` does not. At S = T every spacing gives T-1 ... 0. DPM-Solver++ in particular
wants `trailing`: `linspace` and `leading` end on t = 0, so the step before is long in log-SNR and
the 2M extrapolation from it overshoots (on a Gaussian toy at 20 steps, std 0.62 for a true 0.5).

`clip_x0=True` clips the predicted x0 to [-1, 1] and re-derives eps from it, so every scheduler
stays consistent with the clipped prediction. Arrays stay float32; coefficients are computed in
float64 and applied as Python floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import ToolkitError
from .schedules import ScheduleTables

SPACINGS = ("linspace", "leading", "trailing", "logsnr", "karras")
DEFAULT_SPACING = "trailing"
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5


def spaced_timesteps(alphas_cumprod: np.ndarray, steps: int, spacing: str = DEFAULT_SPACING) -> np.ndarray:
    """`steps` distinct timesteps of [0, T), in descending (sampling) order; T = len(alphas_cumprod), which
    the noise-level spacings (`logsnr`, `karras`) also read."""
    timesteps = len(alphas_cumprod)
    if not 1 <= steps <= timesteps:
        raise ToolkitError(f"steps must be between 1 and T={timesteps}, got {steps}")
    if spacing == "linspace":
        chosen = np.round(np.linspace(0, timesteps - 1, steps))[::-1]
    elif spacing == "leading":
        chosen = (np.arange(steps) * (timesteps // steps))[::-1]
    elif spacing == "trailing":
        chosen = np.round(timesteps - np.arange(steps) * (timesteps / steps)) - 1
    elif spacing in ("logsnr", "karras"):
        chosen = _noise_level_timesteps(np.asarray(alphas_cumprod, dtype=np.float64), steps, spacing)
    else:
        raise ToolkitError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return chosen.astype(np.int64)


def _noise_level_timesteps(abar: np.ndarray, steps: int, spacing: str) -> np.ndarray:
    """From t = T-1 down to t = 0, evenly spaced in log-SNR (`logsnr`) or in sigma^(1/rho) (`karras`, sigma =
    sqrt((1 - abar) / abar)), each level rounded to the nearest timestep in log sigma; where rounding gives a
    timestep twice, the later one moves down (and the earlier up where it reaches 0), so all stay distinct."""
    log_sigma = 0.5 * np.log((1.0 - abar) / abar)  # increasing in t; -log_sigma is half the log-SNR
    fraction = np.linspace(0.0, 1.0, steps)
    if spacing == "logsnr":
        targets = log_sigma[-1] + fraction * (log_sigma[0] - log_sigma[-1])
    else:
        ends = np.exp(log_sigma[[-1, 0]] / KARRAS_RHO)
        targets = KARRAS_RHO * np.log(ends[0] + fraction * (ends[1] - ends[0]))
    chosen = np.abs(log_sigma[None, :] - targets[:, None]).argmin(axis=1)
    for i in range(1, steps):  # descending and distinct ...
        chosen[i] = min(chosen[i], chosen[i - 1] - 1)
    for i in range(steps - 1, -1, -1):  # ... and none below 0
        chosen[i] = max(chosen[i], steps - 1 - i)
        if i + 1 < steps:
            chosen[i] = max(chosen[i], chosen[i + 1] + 1)
    return chosen


STEP_COLUMNS = ("sqrt_abar", "sqrt_one_minus_abar", "x", "eps", "x0", "x0_prev1", "x0_prev2", "z")
_COLUMN = {name: i for i, name in enumerate(STEP_COLUMNS)}
_PREV = _COLUMN["x0_prev1"]  # x0_prev1, x0_prev2 are adjacent columns


@dataclass(frozen=True)
class StepTable:
    """Every scheduler step, as per-step weights (columns `STEP_COLUMNS`); `apply_step` applies a row."""

    timesteps: np.ndarray  # (S,) int64: the U-Net's t at each step, descending
    weights: np.ndarray  # (S, len(STEP_COLUMNS)) float64
    history: int  # how many previous x0 the solver state carries: 0, 1 or 2
    clip_x0: bool
    noise_steps: int  # steps 0 .. noise_steps-1 consume a z (stochastic samplers); the others get none

    def __post_init__(self) -> None:
        for name, dtype in (("timesteps", np.int64), ("weights", np.float64)):
            array = np.array(getattr(self, name), dtype=dtype)  # a read-only copy: every run of a scheduler shares it
            array.flags.writeable = False
            object.__setattr__(self, name, array)
        if self.weights.shape != (len(self.timesteps), len(STEP_COLUMNS)) or self.history not in (0, 1, 2) \
                or not 0 <= self.noise_steps <= len(self.timesteps):
            raise ValueError(f"inconsistent step table: {len(self.timesteps)} timesteps, weights {self.weights.shape}, "
                             f"history {self.history}, noise_steps {self.noise_steps}")
        if self.weights[self.noise_steps:, _COLUMN["z"]].any() or self.weights[:, _PREV + self.history:_PREV + 2].any():
            raise ValueError("inconsistent step table: it weights z after the noise steps, or more previous x0 "
                             f"than its history of {self.history}")


def apply_step(table: StepTable, i: int, x: np.ndarray, eps: np.ndarray, history: Sequence[np.ndarray] = (),
               z: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, Tuple[np.ndarray, ...]]:
    """Step i of `table`: (x_next, x0, new history). `history` holds the previous steps' x0, newest first
    (missing ones count as zeros); z is needed on steps 0 .. noise_steps-1 and ignored on the others."""
    w = [float(c) for c in table.weights[i]]
    s0, s1 = w[_COLUMN["sqrt_abar"]], w[_COLUMN["sqrt_one_minus_abar"]]
    x0 = (x - s1 * eps) / s0
    if table.clip_x0:
        x0 = np.clip(x0, -1.0, 1.0)
        eps = (x - s0 * x0) / s1
    previous = w[_PREV:_PREV + 2]
    if any(previous[len(history):]):
        raise ValueError(f"step {i} needs the x0 of the previous steps: steps must come in order")
    if i < table.noise_steps and z is None:
        raise ValueError("this step is stochastic: pass its noise z")
    terms = [(w[_COLUMN["x"]], x), (w[_COLUMN["eps"]], eps), (w[_COLUMN["x0"]], x0), *zip(previous, history),
             (w[_COLUMN["z"]], z)]
    x_next = sum(c * v for c, v in terms if c != 0.0)
    return x_next, x0, (x0, *history)[:table.history]


def _row(abar: float, **weights: float) -> np.ndarray:
    """One step's weights: x0 is predicted at `abar`; unnamed columns are 0."""
    row = np.zeros(len(STEP_COLUMNS))
    row[_COLUMN["sqrt_abar"]], row[_COLUMN["sqrt_one_minus_abar"]] = math.sqrt(abar), math.sqrt(1.0 - abar)
    for name, weight in weights.items():
        row[_COLUMN[name]] = weight
    return row


class Scheduler:
    """The schedule, the visited timesteps, their step table (read-only), and the previous x0s that `step` carries
    within one run. `Sampler.denoise` keeps a run's x0s itself, so one Scheduler serves many runs, even at once."""

    stochastic = False  # whether the run takes a fresh z on every step but the last
    history = 0  # how many previous x0 a step uses

    def __init__(self, tables: ScheduleTables, spacing: str = DEFAULT_SPACING, clip_x0: bool = False):
        self.tables = tables
        self.spacing = spacing
        self.clip_x0 = clip_x0
        self.timesteps = np.zeros(0, dtype=np.int64)
        self._table: Optional[StepTable] = None
        self._index: Dict[int, int] = {}
        self.reset()

    def set_timesteps(self, steps: int) -> "Scheduler":
        self.timesteps = spaced_timesteps(self.tables.alphas_cumprod, steps, self.spacing)
        self._index = {int(t): i for i, t in enumerate(self.timesteps)}
        abars = np.append(self.tables.alphas_cumprod[self.timesteps], 1.0)  # and 1 after the last step
        self._table = StepTable(self.timesteps, self._weights(abars), self.history, self.clip_x0,
                                steps - 1 if self.stochastic else 0)
        self.reset()
        return self

    def table(self) -> StepTable:
        """The per-step weights of this run's timesteps (what `step` applies, and what an exporter bakes in)."""
        if self._table is None:
            raise ValueError("call set_timesteps first")
        return self._table

    def reset(self) -> None:
        """Forget the previous x0s a run carries from step to step (multistep schedulers only have any)."""
        self._history: Tuple[np.ndarray, ...] = ()

    @property
    def noise_steps(self) -> int:
        """How many z the run consumes: one per step except the last, if stochastic."""
        return self.table().noise_steps

    def step(self, eps: np.ndarray, t: int, x: np.ndarray, noise: Optional[np.ndarray] = None) -> np.ndarray:
        """The step at timestep t: `apply_step` of its row. Multistep schedulers need their steps in order."""
        i = self._index.get(int(t))
        if i is None:
            raise ValueError(f"timestep {t} is not one of this run's timesteps (call set_timesteps first)")
        x_next, _, self._history = apply_step(self.table(), i, x, eps, self._history, noise)
        return x_next

    def _weights(self, abars: np.ndarray) -> np.ndarray:
        """(S, len(STEP_COLUMNS)) weights from abar at the visited timesteps and after the last one (S + 1 values)."""
        return np.stack([self._step_row(i, abars) for i in range(len(abars) - 1)])

    def _step_row(self, i: int, abars: np.ndarray) -> np.ndarray:
        """The weights of step i, which moves from abars[i] to abars[i + 1]."""
        raise NotImplementedError


class DDPMScheduler(Scheduler):
    """The tutorial's p_sample: mean = (x - beta eps / sqrt(1 - abar)) / sqrt(alpha), plus sqrt(posterior var) z."""

    stochastic = True

    def _step_row(self, i: int, abars: np.ndarray) -> np.ndarray:
        abar, abar_prev = abars[i], abars[i + 1]
        alpha = abar / abar_prev  # = 1 - beta'; the tutorial's alpha_t when no timestep is skipped
        beta = 1.0 - alpha
        # the posterior variance is 0 on the last step (abar_prev = 1, the tutorial's t_index == 0): the mean
        variance = beta * (1.0 - abar_prev) / (1.0 - abar)
        return _row(abar, x=1.0 / math.sqrt(alpha), eps=-beta / math.sqrt(1.0 - abar) / math.sqrt(alpha),
                    z=math.sqrt(variance))


class DDIMScheduler(Scheduler):
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z (Song et al. eq. 12)."""

    def __init__(self, tables: ScheduleTables, eta: float = 0.0, spacing: str = DEFAULT_SPACING, clip_x0: bool = False):
        if eta < 0:
            raise ToolkitError(f"eta must be >= 0, got {eta}")
        super().__init__(tables, spacing, clip_x0)
        self.eta = eta
        self.stochastic = eta > 0

    def _step_row(self, i: int, abars: np.ndarray) -> np.ndarray:
        abar, abar_prev = abars[i], abars[i + 1]
        # sigma^2 is 0 on the last step, which lands on abar_prev = 1: x0 itself
        variance = self.eta**2 * (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)
        direction = math.sqrt(max(1.0 - abar_prev - variance, 0.0))
        return _row(abar, x0=math.sqrt(abar_prev), eps=direction, z=math.sqrt(variance))


LOWER_ORDER_FINAL_BELOW = 15  # diffusers' lower_order_final: with fewer steps, the order drops over the last ones


class DPMSolverPlusPlusScheduler(Scheduler):
    """DPM-Solver++(2M) with alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar), lambda_t = log(alpha_t / sigma_t).

    First order: x_prev = (sigma_prev / sigma_t) x - alpha_prev (e^{-h} - 1) x0, with h = lambda_prev - lambda_t.
    Second order: x0 is replaced by D = (1 + 1/(2r)) x0 - 1/(2r) x0_last, r = h_last / h. It keeps the
    last x0 between calls, so steps must come in order; `set_timesteps` resets it.
    """

    order = 2
    history = 1  # x0_last

    def _step_row(self, i: int, abars: np.ndarray) -> np.ndarray:
        if abars[i + 1] == 1.0:  # final step, first order: sigma_prev = 0, so x_prev = x0
            return _row(abars[i], x0=1.0)
        order = min(self.order, i + 1)  # first order on the first step: no previous x0 yet
        if len(abars) - 1 < LOWER_ORDER_FINAL_BELOW:
            order = min(order, len(abars) - 1 - i)  # ... and towards the end, as diffusers' lower_order_final
        lam = [_half_log_snr(abars[j]) for j in range(i - order + 1, i + 2)]  # lambda at steps i-order+1 .. i+1
        h = lam[-1] - lam[-2]
        ratios = [(lam[-2 - k] - lam[-3 - k]) / h for k in range(order - 1)]  # r0 = h_last / h, r1 = h_before / h
        return self._update(abars[i], abars[i + 1], h, ratios)

    def _update(self, abar: float, abar_prev: float, h: float, ratios: List[float]) -> np.ndarray:
        """The ODE step onto abar_prev: first order, or the 2M midpoint form (diffusers' solver_type="midpoint")."""
        phi = -math.sqrt(abar_prev) * math.expm1(-h)
        return _row(abar, x=_sigma_ratio(abar, abar_prev), **_x0_weights(phi * _midpoint(ratios)))


class DPMSolverPlusPlusSDEScheduler(DPMSolverPlusPlusScheduler):
    """SDE-DPM-Solver++(2M), Lu et al.'s multistep solver of the reverse diffusion SDE (diffusers'
    `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`, midpoint; huggingface/diffusers#3344):

        x_prev = (sigma_prev / sigma_t) e^{-h} x + alpha_prev (1 - e^{-2h}) D + sigma_prev sqrt(1 - e^{-2h}) z

    with D as in 2M. First order it is exactly DDIM with eta = 1, i.e. the (respaced) DDPM step. The
    last step lands on x0 and takes no z.
    """

    stochastic = True

    def _update(self, abar: float, abar_prev: float, h: float, ratios: List[float]) -> np.ndarray:
        spread = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        return _row(abar, x=_sigma_ratio(abar, abar_prev) * math.exp(-h), z=math.sqrt((1.0 - abar_prev) * spread),
                    **_x0_weights(math.sqrt(abar_prev) * spread * _midpoint(ratios)))


class DPMSolverPlusPlus3MScheduler(DPMSolverPlusPlusScheduler):
    """DPM-Solver++(3M): third order multistep, the scheme of diffusers' `multistep_dpm_solver_third_order_update`
    (`solver_order=3`, `lower_order_final`); 2M on the second step and, below 15 steps, on the last but one.

    x0 is extrapolated in lambda from the last three x0, m0, m1, m2, with r0 = h_last / h, r1 = h_before / h:
    D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) ~ h m' and
    D2 = 2 (D1_0 - D1_1) / (r0 + r1) ~ h^2 m''; integrating m0 + s m' + s^2/2 m'' exactly over the step gives
    x_prev = (sigma_prev / sigma_t) x - alpha_prev (e^{-h} - 1) m0 + alpha_prev ((e^{-h} - 1) / h + 1) D1
             - alpha_prev ((e^{-h} - 1 + h) / h^2 - 1/2) D2.
    diffusers and the dpm-solver reference code define D2 without the factor 2 (~ h^2 m'' / 2) under the same
    weight: the m'' term is halved, the step's local error is O(h^3), and the solver converges at order 2 only
    (tests/test_scheduler_order.py measures both); with the factor it is third order.
    """

    order = 3
    history = 2  # m1, m2

    def _update(self, abar: float, abar_prev: float, h: float, ratios: List[float]) -> np.ndarray:
        if len(ratios) < 2:
            return super()._update(abar, abar_prev, h, ratios)
        r0, r1 = ratios
        alpha_prev, em1 = math.sqrt(abar_prev), math.expm1(-h)
        phi1, phi2, phi3 = -alpha_prev * em1, alpha_prev * (em1 / h + 1.0), alpha_prev * ((em1 + h) / h**2 - 0.5)
        # each D as its weights on (m0, m1, m2)
        d1_0, d1_1 = np.array([1.0, -1.0, 0.0]) / r0, np.array([0.0, 1.0, -1.0]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
        x0_weights = phi1 * np.array([1.0, 0.0, 0.0]) + phi2 * d1 - phi3 * d2
        return _row(abar, x=_sigma_ratio(abar, abar_prev), **_x0_weights(x0_weights))


def _half_log_snr(abar: float) -> float:
    return 0.5 * math.log(abar / (1.0 - abar))


def _sigma_ratio(abar: float, abar_prev: float) -> float:
    return math.sqrt((1.0 - abar_prev) / (1.0 - abar))


def _midpoint(ratios: List[float]) -> np.ndarray:
    """D's weights on (x0, x0_last): x0 alone (first order), or D0 + D1/2 with D1 = (x0 - x0_last) / r0."""
    if not ratios:
        return np.array([1.0])
    half_inverse_r = 0.5 / ratios[0]
    return np.array([1.0 + half_inverse_r, -half_inverse_r])


def _x0_weights(weights: np.ndarray) -> Dict[str, float]:
    """Weights on the current x0, then the previous ones, as step-table columns."""
    return dict(zip(("x0", "x0_prev1", "x0_prev2"), map(float, weights)))


_CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmpp": DPMSolverPlusPlusScheduler,
            "dpmpp-sde": DPMSolverPlusPlusSDEScheduler, "dpmpp3m": DPMSolverPlusPlus3MScheduler}
SCHEDULERS = tuple(_CLASSES)
# The runtime's default: the best quality per U-Net call measured (docs/quality.md, 10,000 paired samples):
# SDE-DPM-Solver++(2M) at 10 steps scored 11.6% better than the tutorial's 200-step DDPM [6.0%, 17.2%] with a
# twentieth of its U-Net calls (20 steps: not distinguishable; 5 steps: 76% worse), while every deterministic
# sampler scored 2.7-3.0x worse.
DEFAULT_SCHEDULER = "dpmpp-sde"
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp": 20, "dpmpp-sde": 10, "dpmpp3m": 20}  # None: all T steps


def make_scheduler(name: str, tables: ScheduleTables, steps: Optional[int] = None, *, eta: float = 0.0,
                   spacing: str = DEFAULT_SPACING, clip_x0: bool = False) -> Scheduler:
    """A scheduler by name, with its timesteps set (default steps `DEFAULT_STEPS`: T for ddpm, 50 ddim, 10 dpmpp-sde,
    20 the deterministic DPM-Solvers; at most T)."""
    if name not in SCHEDULERS:
        raise ToolkitError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if eta and name != "ddim":
        raise ToolkitError(f"eta applies to the ddim scheduler only, not {name}")
    if name == "ddim":
        scheduler: Scheduler = DDIMScheduler(tables, eta=eta, spacing=spacing, clip_x0=clip_x0)
    else:
        scheduler = _CLASSES[name](tables, spacing=spacing, clip_x0=clip_x0)
    if steps is None:
        steps = min(DEFAULT_STEPS[name] or tables.timesteps, tables.timesteps)
    return scheduler.set_timesteps(steps)


def brownian_coupling(table: StepTable, tables: ScheduleTables) -> np.ndarray:
    """(table.noise_steps, T - 1) weights that build each stochastic step's z from the step noise of the full
    T-step DDPM chain (column k: that chain's z number k, at timestep T-1-k), so that runs with any step count
    follow one Brownian path: `z_i = weights[i] @ fine_z`. Row i spans the fine steps from its timestep down to
    the next one, each fine z weighted by its standard deviation carried to the end of the span (the posterior
    mean's coefficient of x at every fine step after it), and has unit norm. The spans are disjoint, so the z_i
    are still independent N(0, I): each run alone samples as with fresh noise, and runs sharing a path differ
    only by their discretisation (common random numbers for comparing samplers). The T-step DDPM chain gets
    the identity."""
    abar = tables.alphas_cumprod
    abar_prev = tables.alphas_cumprod_prev
    sigma = np.sqrt(tables.posterior_variance)  # 0 at t = 0, which lands on clean data
    carry = np.sqrt(abar / abar_prev) * (1.0 - abar_prev) / (1.0 - abar)  # x_t's weight in the posterior mean
    last = tables.timesteps - 1
    ends = np.append(table.timesteps[1:], -1)  # the timestep each step lands on (-1: clean data)
    weights = np.zeros((table.noise_steps, last))
    for i in range(table.noise_steps):
        for t in range(int(ends[i]) + 1, int(table.timesteps[i]) + 1):  # fine steps t -> t-1 inside the span
            if t > 0:
                weights[i, last - t] = sigma[t] * np.prod(carry[ends[i] + 1:t])
        norm = np.linalg.norm(weights[i])
        if norm == 0.0:
            raise ValueError(f"step {i} is stochastic but spans no noisy step of the T-step chain")
        weights[i] /= norm
    return weights
