"""Convergence orders of the samplers on a Gaussian toy whose exact answers are closed-form.

Data x_0 ~ N(MEAN, STD^2) per pixel. Then x_t ~ N(alpha MEAN, alpha^2 STD^2 + sigma^2), the exact eps(x, t)
and x0(x, t) = E[x_0 | x_t] are affine in x, and the probability-flow ODE keeps the standardised value
u = (x_t - alpha MEAN) / sqrt(alpha^2 STD^2 + sigma^2) fixed, so its exact endpoint from any x_T is known.

The schedule is log-SNR lambda(s) = 5 - 5 s - 5 s^2 at s = t / (T - 1), a smooth grid whose steps grow
3x towards the noise: `linspace` spacing with S - 1 dividing T - 1 visits nested, exact grids. (On the
real linear-beta schedule the steps in lambda near t = 0 are long and uneven, and the errors there are
not yet asymptotic at 160 steps; on a uniform lambda grid 3M converges at order 4, the h^3 error terms
cancelling.) Arithmetic is float64, so the float32 rounding of x does not floor the small errors.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import pytest

from ms_ddpm.runtime.schedulers import STEP_COLUMNS, DPMSolverPlusPlus3MScheduler, Scheduler, make_scheduler
from ms_ddpm.runtime.schedules import ScheduleTables

MEAN, STD = 0.3, 0.5
T = 1921  # T - 1 = 1920 = 12 * 160: the grids of 21, 41, 81 and 161 steps are exact
STEPS = (41, 81, 161)


def lambda_schedule(lam: np.ndarray) -> ScheduleTables:
    abar = 1.0 / (1.0 + np.exp(-2.0 * lam))  # lambda = log(alpha / sigma) = 0.5 log(abar / (1 - abar))
    return ScheduleTables.from_betas(1.0 - abar / np.concatenate([[1.0], abar[:-1]]))


S_GRID = np.linspace(0.0, 1.0, T)
SMOOTH = lambda_schedule(5.0 - 5.0 * S_GRID - 5.0 * S_GRID**2)


def _alpha_sigma_spread(tables: ScheduleTables, t: int) -> Tuple[float, float, float]:
    abar = float(tables.alphas_cumprod[t])
    return math.sqrt(abar), math.sqrt(1.0 - abar), math.sqrt(abar * STD**2 + 1.0 - abar)


def exact_eps(tables: ScheduleTables, x: np.ndarray, t: int) -> np.ndarray:
    alpha, sigma, spread = _alpha_sigma_spread(tables, t)
    return sigma * (x - alpha * MEAN) / spread**2


def exact_x0(tables: ScheduleTables, x: np.ndarray, t: int) -> np.ndarray:
    alpha, _, spread = _alpha_sigma_spread(tables, t)
    return MEAN + alpha * STD**2 * (x - alpha * MEAN) / spread**2


def exact_flow(tables: ScheduleTables, x: np.ndarray, t_from: int, t_to: int) -> np.ndarray:
    alpha, _, spread = _alpha_sigma_spread(tables, t_from)
    alpha_to, _, spread_to = _alpha_sigma_spread(tables, t_to)
    return alpha_to * MEAN + spread_to * (x - alpha * MEAN) / spread


def ode_error(scheduler: Scheduler) -> float:
    """Max error over x_T in [-3, 3] against the exact flow to the last visited timestep followed by the
    exact x0 there, which is what the last step computes: it measures the integration error alone."""
    tables, timesteps = scheduler.tables, scheduler.timesteps
    x_T = np.linspace(-3.0, 3.0, 101)
    x = x_T
    for t in timesteps:
        x = scheduler.step(exact_eps(tables, x, int(t)), int(t), x)
    exact = exact_x0(tables, exact_flow(tables, x_T, int(timesteps[0]), int(timesteps[-1])), int(timesteps[-1]))
    return float(np.abs(x - exact).max())


def orders(make) -> list:
    errors = [ode_error(make(steps)) for steps in STEPS]
    return [math.log2(coarse / fine) for coarse, fine in zip(errors, errors[1:])]


class DiffusersThirdOrder(DPMSolverPlusPlus3MScheduler):
    """3M with diffusers' (and dpm-solver's) D2 = (D1_0 - D1_1) / (r0 + r1), half of ours, under the same weight."""

    def _update(self, abar, abar_prev, h, ratios):
        row = super()._update(abar, abar_prev, h, ratios)
        if len(ratios) == 2:
            r0, r1 = ratios
            phi3 = math.sqrt(abar_prev) * ((math.expm1(-h) + h) / h**2 - 0.5)
            half_d2 = (np.array([1.0, -1.0, 0.0]) / r0 - np.array([0.0, 1.0, -1.0]) / r1) / (r0 + r1)
            x0 = STEP_COLUMNS.index("x0")
            row[x0:x0 + 3] += phi3 * half_d2  # ours subtracts phi3 * 2 half_d2
        return row


@pytest.mark.parametrize("name, order", [("ddim", 1), ("dpmpp", 2), ("dpmpp3m", 3)])
def test_ode_solvers_converge_at_their_order(name, order):
    """Doubling the steps divides the error by 2^order (measured: ddim 0.98, 0.99; dpmpp 1.82, 1.93;
    dpmpp3m 3.21, 3.13)."""
    measured = orders(lambda steps: make_scheduler(name, SMOOTH, steps, spacing="linspace"))
    assert measured[-1] == pytest.approx(order, abs=0.25), measured
    assert measured[0] == pytest.approx(order, abs=0.4), measured


def test_diffusers_third_order_weights_converge_at_order_two_only():
    """Why 3M doubles diffusers' D2: with it halved the order is 2 (measured 2.36, 2.18), and at 161 steps
    the error is 7x ours."""
    measured = orders(lambda steps: DiffusersThirdOrder(SMOOTH, spacing="linspace").set_timesteps(steps))
    assert measured[-1] == pytest.approx(2.0, abs=0.25), measured
    ours = make_scheduler("dpmpp3m", SMOOTH, STEPS[-1], spacing="linspace")
    assert ode_error(DiffusersThirdOrder(SMOOTH, spacing="linspace").set_timesteps(STEPS[-1])) > 4 * ode_error(ours)


def exact_moments(scheduler: Scheduler) -> Tuple[float, float]:
    """The exact mean and std of the sampler's output for x_T ~ N(0, 1). Every step is affine in (x, z) here,
    so x is kept as an affine function of the independent normals (x_T, z_0, z_1, ...): the vector
    [constant, coefficients], stepped by the scheduler itself with basis vectors for the z."""
    tables, size = scheduler.tables, 2 + scheduler.noise_steps
    x = np.eye(size)[1]  # x_T
    for i, t in enumerate(scheduler.timesteps):
        alpha, sigma, spread = _alpha_sigma_spread(tables, int(t))
        eps = sigma / spread**2 * x
        eps[0] -= sigma / spread**2 * alpha * MEAN
        z = np.eye(size)[2 + i] if i < scheduler.noise_steps else None
        x = scheduler.step(eps, int(t), x, z)
    return float(x[0]), float(np.linalg.norm(x[1:]))


def test_the_sde_sampler_converges_to_the_data_distribution():
    """SDE-DPM-Solver++(2M)'s output mean and std approach (MEAN, STD), the std error shrinking ~4x per doubling
    (measured std error +0.0057, +0.0028, +0.0008, +0.0002 at 21 ... 161 steps), far ahead of DDPM's first
    order (-0.108, -0.058, -0.030, -0.015)."""
    def std_errors(name):
        moments = [exact_moments(make_scheduler(name, SMOOTH, steps, spacing="linspace")) for steps in (21, *STEPS)]
        assert all(mean == pytest.approx(MEAN, abs=1e-4) for mean, _ in moments)  # the SDE forgets x_T's bias
        return [abs(std - STD) for _, std in moments]

    sde, ddpm = std_errors("dpmpp-sde"), std_errors("ddpm")
    assert all(coarse > 1.8 * fine for coarse, fine in zip(sde, sde[1:])), sde
    assert sde[-1] < 5e-4 and all(mine < theirs / 10 for mine, theirs in zip(sde, ddpm)), (sde, ddpm)


def test_exact_moments_match_sampling():
    """The moment propagation above against plain sampling of 200,000 pixels (standard error of the std: 0.0008)."""
    scheduler = make_scheduler("dpmpp-sde", SMOOTH, 21, spacing="linspace")
    mean, std = exact_moments(scheduler)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    for i, t in enumerate(scheduler.timesteps):
        z = rng.standard_normal(x.shape) if i < scheduler.noise_steps else None
        x = scheduler.step(exact_eps(SMOOTH, x, int(t)), int(t), x, z)
    assert x.mean() == pytest.approx(mean, abs=0.004) and x.std() == pytest.approx(std, abs=0.003)
