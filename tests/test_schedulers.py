"""The numpy schedulers: hand-derived steps on a 3-step schedule, spacing rules, and sampling a
Gaussian data distribution through its exact eps-oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import ToolkitError
from runtime.schedulers import (SCHEDULERS, SPACINGS, DDIMScheduler, DDPMScheduler, DPMSolverPlusPlusScheduler,
                                make_scheduler, spaced_timesteps)
from runtime.schedules import ScheduleTables

# betas 0.1, 0.2, 0.3 -> alphas 0.9, 0.8, 0.7 -> alphas_cumprod 0.9, 0.72, 0.504
TINY = ScheduleTables.from_betas(np.array([0.1, 0.2, 0.3]))
X, EPS, Z = 1.0, 0.5, 0.25


def one_step(scheduler, steps: int, t: int, x: float = X, eps: float = EPS, z: float = Z) -> float:
    scheduler.set_timesteps(steps)
    return float(scheduler.step(np.float32([eps]), t, np.float32([x]), np.float32([z]))[0])


# ---- hand-derived single steps ----------------------------------------------------------------------
def test_ddpm_full_chain_is_the_tutorials_p_sample():
    ddpm = DDPMScheduler(TINY)
    # t = 2: beta 0.3, alpha 0.7, abar 0.504, posterior variance 0.3 * (1 - 0.72) / (1 - 0.504)
    expected = (X - 0.3 * EPS / math.sqrt(0.496)) / math.sqrt(0.7) + math.sqrt(0.3 * 0.28 / 0.496) * Z
    assert one_step(ddpm, 3, 2) == pytest.approx(expected, rel=1e-6)
    # t = 0 (t_index == 0): the mean only, the noise is not used
    assert one_step(ddpm, 3, 0) == pytest.approx((X - 0.1 * EPS / math.sqrt(0.1)) / math.sqrt(0.9), rel=1e-6)


def test_respaced_ddpm_recomputes_beta_from_the_kept_alphas_cumprod():
    ddpm = DDPMScheduler(TINY, spacing="linspace")  # 2 steps: t = 2, 0
    beta = 1 - 0.504 / 0.9  # 0.44
    expected = (X - beta * EPS / math.sqrt(0.496)) / math.sqrt(1 - beta) + math.sqrt(beta * 0.1 / 0.496) * Z
    assert one_step(ddpm, 2, 2) == pytest.approx(expected, rel=1e-6)


def test_ddim_step_is_song_et_al_eq_12():
    x0 = (X - math.sqrt(0.496) * EPS) / math.sqrt(0.504)
    deterministic = DDIMScheduler(TINY, eta=0.0, spacing="linspace")  # t = 2 -> 0
    assert one_step(deterministic, 2, 2) == pytest.approx(math.sqrt(0.9) * x0 + math.sqrt(0.1) * EPS, rel=1e-6)
    sigma2 = 0.5**2 * (0.1 / 0.496) * (1 - 0.504 / 0.9)
    noisy = DDIMScheduler(TINY, eta=0.5, spacing="linspace")
    expected = math.sqrt(0.9) * x0 + math.sqrt(0.1 - sigma2) * EPS + math.sqrt(sigma2) * Z
    assert one_step(noisy, 2, 2) == pytest.approx(expected, rel=1e-6)
    # the last step lands on abar_prev = 1: x0 itself
    assert one_step(noisy, 2, 0) == pytest.approx((X - math.sqrt(0.1) * EPS) / math.sqrt(0.9), rel=1e-6)


def test_dpmpp_2m_follows_lu_et_al_algorithm_2():
    alpha = [math.sqrt(a) for a in (0.9, 0.72, 0.504)]
    sigma = [math.sqrt(1 - a) for a in (0.9, 0.72, 0.504)]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    eps = [0.5, -0.3, 0.2]  # model outputs at t = 2, 1, 0
    x0_of = lambda x, t: (x - sigma[t] * eps[2 - t]) / alpha[t]  # noqa: E731

    x2 = X
    h = lam[1] - lam[2]  # first step: first order (DPM-Solver++(1) = DDIM)
    x1 = sigma[1] / sigma[2] * x2 - alpha[1] * (math.exp(-h) - 1) * x0_of(x2, 2)
    h, h_last = lam[0] - lam[1], h  # second step: 2M
    r = h_last / h
    d = (1 + 1 / (2 * r)) * x0_of(x1, 1) - 1 / (2 * r) * x0_of(x2, 2)
    x_0 = sigma[0] / sigma[1] * x1 - alpha[0] * (math.exp(-h) - 1) * d
    final = x0_of(x_0, 0)  # last step: first order onto abar = 1, i.e. x0

    solver = DPMSolverPlusPlusScheduler(TINY).set_timesteps(3)
    x = np.float32([X])
    for t, e, expected in zip((2, 1, 0), eps, (x1, x_0, final)):
        x = solver.step(np.float32([e]), t, x)
        assert float(x[0]) == pytest.approx(expected, rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(1, 40), spacing=st.sampled_from(SPACINGS), seed=st.integers(0, 2**16))
def test_ddim_with_eta_one_is_exactly_the_ddpm_step(steps, spacing, seed):
    tables = ScheduleTables.from_name("linear", 40)
    ddpm = DDPMScheduler(tables, spacing=spacing).set_timesteps(steps)
    ddim = DDIMScheduler(tables, eta=1.0, spacing=spacing).set_timesteps(steps)
    rng = np.random.default_rng(seed)
    eps, x, z = rng.standard_normal((3, 64)).astype(np.float32)
    for t in ddpm.timesteps:
        np.testing.assert_allclose(ddim.step(eps, t, x, z), ddpm.step(eps, t, x, z), rtol=1e-4, atol=1e-5)


def test_clip_x0_keeps_the_prediction_in_range():
    huge_eps = np.float32([-40.0, 40.0])
    for name in SCHEDULERS:
        clipped = make_scheduler(name, TINY, 1, clip_x0=True)  # one step: straight to x0
        free = make_scheduler(name, TINY, 1)
        t = int(clipped.timesteps[0])
        assert np.all(np.abs(clipped.step(huge_eps, t, np.float32([0.0, 0.0]))) <= 1.0), name
        assert np.all(np.abs(free.step(huge_eps, t, np.float32([0.0, 0.0]))) > 1.0), name


def test_stochastic_steps_need_noise_and_say_how_many():
    ddpm = make_scheduler("ddpm", TINY)
    assert ddpm.noise_steps == 2 and make_scheduler("ddim", TINY, 3, eta=0.5).noise_steps == 2
    assert make_scheduler("ddim", TINY, 3).noise_steps == 0 and make_scheduler("dpmpp", TINY, 3).noise_steps == 0
    with pytest.raises(ValueError, match="noise"):
        ddpm.step(np.float32([EPS]), 2, np.float32([X]))
    with pytest.raises(ValueError, match="timestep 7"):
        ddpm.step(np.float32([EPS]), 7, np.float32([X]), np.float32([Z]))


# ---- timestep spacing --------------------------------------------------------------------------------
def test_spacings_on_a_small_example():
    assert spaced_timesteps(10, 3, "linspace").tolist() == [9, 4, 0]  # round(0, 4.5, 9), half to even
    assert spaced_timesteps(10, 3, "leading").tolist() == [6, 3, 0]
    assert spaced_timesteps(10, 3, "trailing").tolist() == [9, 6, 2]


@settings(max_examples=60, deadline=None)
@given(timesteps=st.integers(2, 1000), data=st.data(), spacing=st.sampled_from(SPACINGS))
def test_spaced_timesteps_are_distinct_descending_and_in_range(timesteps, data, spacing):
    steps = data.draw(st.integers(1, timesteps))
    chosen = spaced_timesteps(timesteps, steps, spacing)
    assert len(chosen) == steps and np.all(np.diff(chosen) < 0)
    assert 0 <= chosen[-1] and chosen[0] <= timesteps - 1
    if steps == timesteps:
        assert chosen.tolist() == list(range(timesteps - 1, -1, -1))
    if spacing == "trailing":
        assert chosen[0] == timesteps - 1


@pytest.mark.parametrize("steps", [0, 4])
def test_steps_outside_one_to_T_are_refused(steps):
    with pytest.raises(ToolkitError, match="between 1 and T=3"):
        make_scheduler("ddim", TINY, steps)


@pytest.mark.parametrize("kwargs, message", [({"name": "euler"}, "unknown scheduler"),
                                             ({"spacing": "random"}, "unknown timestep spacing"),
                                             ({"name": "ddpm", "eta": 1.0}, "ddim scheduler only"),
                                             ({"eta": -1.0}, "eta must be >= 0")])
def test_bad_scheduler_options_are_refused(kwargs, message):
    kwargs = {"name": "ddim", **kwargs}
    with pytest.raises(ToolkitError, match=message):
        make_scheduler(kwargs.pop("name"), TINY, **kwargs)


# ---- sampling a Gaussian data distribution through its exact eps-oracle --------------------------------
MEAN, STD = 0.3, 0.5  # x_0 ~ N(MEAN, STD^2), one pixel
LONG = ScheduleTables.from_name("linear", 1000)  # abar_T ~ 4e-5: x_T ~ N(0, 1) is the true prior


def oracle_eps(x: np.ndarray, t: int) -> np.ndarray:
    """The exact eps-prediction E[eps | x_t] for x_0 ~ N(MEAN, STD^2)."""
    abar = LONG.alphas_cumprod[t]
    return (math.sqrt(1 - abar) * (x - math.sqrt(abar) * MEAN) / (abar * STD**2 + 1 - abar)).astype(np.float32)


def run_with_oracle(scheduler, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for index, t in enumerate(scheduler.timesteps):
        z = rng.standard_normal(x.shape, dtype=np.float32) if index < scheduler.noise_steps else None
        x = scheduler.step(oracle_eps(x, int(t)), int(t), x, z)
    return x


@pytest.mark.parametrize("name, steps, eta", [("ddpm", None, 0.0), ("ddpm", 250, 0.0), ("ddim", 200, 0.0),
                                              ("ddim", 250, 1.0), ("dpmpp", 25, 0.0)])
def test_every_sampler_recovers_the_data_mean_and_variance(name, steps, eta):
    rng = np.random.default_rng(0)
    x = run_with_oracle(make_scheduler(name, LONG, steps, eta=eta), rng.standard_normal(40_000, dtype=np.float32), rng)
    assert x.mean() == pytest.approx(MEAN, abs=0.01)  # standard error 0.0025
    # discretisation shrinks the variance a little at fewer steps (1-3% here; 7% at DDIM-50)
    assert x.std() == pytest.approx(STD, abs=0.02 if steps else 0.005)


@pytest.mark.parametrize("name, order", [("ddim", 1), ("dpmpp", 2)])
def test_ode_samplers_converge_to_the_exact_flow_at_their_order(name, order):
    """Deterministic samplers integrate the probability-flow ODE, whose solution is known here:
    x_0 = MEAN + STD (x_T - sqrt(abar_T) MEAN) / sqrt(abar_T STD^2 + 1 - abar_T). Doubling the steps
    divides the error by 2^order."""
    x_T = np.linspace(-3, 3, 101, dtype=np.float32)
    errors = []
    for steps in (40, 80):
        scheduler = make_scheduler(name, LONG, steps, spacing="linspace")
        abar = LONG.alphas_cumprod[scheduler.timesteps[0]]
        exact = MEAN + STD * (x_T - math.sqrt(abar) * MEAN) / math.sqrt(abar * STD**2 + 1 - abar)
        errors.append(np.abs(run_with_oracle(scheduler, x_T, rng=None) - exact).max())
    assert errors[0] / errors[1] == pytest.approx(2**order, rel=0.2)
