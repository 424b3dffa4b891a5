"""The numpy schedulers: hand-derived steps on a 3-step schedule, the step tables against the pre-table
formulas, first-order reductions, spacing rules, and sampling a Gaussian data distribution through its
exact eps-oracle. (Convergence orders: tests/test_scheduler_order.py.)"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.schedulers import (SCHEDULERS, SPACINGS, STEP_COLUMNS, DDIMScheduler, DDPMScheduler,
                                        DPMSolverPlusPlusScheduler, StepTable, apply_step, brownian_coupling,
                                        make_scheduler, spaced_timesteps)
from ms_ddpm.runtime.schedules import ScheduleTables

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
    assert make_scheduler("dpmpp-sde", TINY, 3).noise_steps == 2 and make_scheduler("dpmpp3m", TINY, 3).noise_steps == 0
    with pytest.raises(ValueError, match="noise"):
        ddpm.step(np.float32([EPS]), 2, np.float32([X]))
    with pytest.raises(ValueError, match="timestep 7"):
        ddpm.step(np.float32([EPS]), 7, np.float32([X]), np.float32([Z]))


# ---- step tables and apply_step --------------------------------------------------------------------------
LINEAR40 = ScheduleTables.from_name("linear", 40)
COLUMN = {name: i for i, name in enumerate(STEP_COLUMNS)}
HISTORY = {"ddpm": 0, "ddim": 0, "dpmpp": 1, "dpmpp-sde": 1, "dpmpp3m": 2}


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 14, 15, 40])
def test_tables_have_a_row_per_step_and_say_what_state_and_noise_they_need(name, steps):
    scheduler = make_scheduler(name, LINEAR40, steps)
    table = scheduler.table()
    w = table.weights
    assert w.shape == (steps, len(STEP_COLUMNS)) and w.dtype == np.float64 and table.timesteps.dtype == np.int64
    assert table.timesteps.tolist() == scheduler.timesteps.tolist() and table.history == HISTORY[name]
    assert table.noise_steps == scheduler.noise_steps == (steps - 1 if name in ("ddpm", "dpmpp-sde") else 0)
    np.testing.assert_allclose(w[:, COLUMN["sqrt_abar"]], np.sqrt(LINEAR40.alphas_cumprod[table.timesteps]), rtol=1e-15)
    np.testing.assert_allclose(w[:, COLUMN["sqrt_abar"]]**2 + w[:, COLUMN["sqrt_one_minus_abar"]]**2, 1.0, rtol=1e-14)
    # a z on exactly the noise steps; previous x0s once they exist, never on the final step (it lands on x0),
    # and for 3M below 15 steps not on the last but one (second order there)
    assert np.all(w[:table.noise_steps, COLUMN["z"]] > 0) and not np.any(w[table.noise_steps:, COLUMN["z"]])
    used = {column: np.flatnonzero(w[:, COLUMN[column]]).tolist() for column in ("x0_prev1", "x0_prev2")}
    assert used["x0_prev1"] == (list(range(1, steps - 1)) if table.history else [])
    assert used["x0_prev2"] == (list(range(2, steps - 1 - (steps < 15))) if table.history == 2 else [])


@pytest.mark.parametrize("name, eta", [(name, 0.0) for name in SCHEDULERS] + [("ddim", 0.5)])
def test_every_scheduler_lands_on_the_predicted_x0(name, eta):
    scheduler = make_scheduler(name, LINEAR40, 6, eta=eta)
    rng = np.random.default_rng(1)
    for t in scheduler.timesteps:
        x, eps, z = rng.standard_normal((3, 16))
        x_next = scheduler.step(eps, int(t), x, z)
    abar = LINEAR40.alphas_cumprod[t]
    np.testing.assert_allclose(x_next, (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar), rtol=1e-12)


def test_tables_are_read_only_copies_shared_by_every_run():
    weights = np.zeros((2, len(STEP_COLUMNS)))
    table = StepTable(np.array([5, 1]), weights, history=0, clip_x0=False, noise_steps=0)
    weights[0, 0] = 1.0
    assert table.weights[0, 0] == 0.0 and not table.weights.flags.writeable and not table.timesteps.flags.writeable
    scheduler = make_scheduler("dpmpp3m", LINEAR40, 5)
    table, x = scheduler.table(), np.ones(4)
    for t in scheduler.timesteps:  # a run moves the solver's x0 history, never the table
        x = scheduler.step(np.zeros(4), int(t), x)
    assert scheduler.table() is table
    with pytest.raises(ValueError, match="set_timesteps"):
        DDPMScheduler(TINY).table()


def weights_with(**columns: list) -> np.ndarray:
    weights = np.zeros((2, len(STEP_COLUMNS)))
    for name, values in columns.items():
        weights[:, COLUMN[name]] = values
    return weights


@pytest.mark.parametrize("kwargs", [{"timesteps": np.array([5])}, {"history": 3}, {"noise_steps": 3},
                                    {"weights": weights_with(z=[1.0, 1.0])},  # z on a step that gets none
                                    {"weights": weights_with(x0_prev2=[0.0, 1.0]), "history": 1}])
def test_inconsistent_tables_are_refused(kwargs):
    fields = dict(timesteps=np.array([5, 1]), weights=weights_with(z=[1.0, 0.0], x0_prev1=[0.0, 1.0]), history=1,
                  clip_x0=False, noise_steps=1)
    StepTable(**fields)
    with pytest.raises(ValueError, match="inconsistent step table"):
        StepTable(**{**fields, **kwargs})


# every column used, three steps: a z on the first, then one and two previous x0
RAW = np.array([[0.6, 0.8, 1.1, -0.7, 0.9, 0.0, 0.0, 0.3],
                [0.8, 0.6, 0.5, 0.2, 1.3, -0.4, 0.0, 0.0],
                [0.96, 0.28, 0.1, 0.0, 1.5, -0.8, 0.3, 0.0]])


def test_apply_step_is_the_documented_linear_combination_and_shifts_the_history():
    table = StepTable(np.array([9, 5, 2]), RAW, history=2, clip_x0=False, noise_steps=1)
    rng = np.random.default_rng(2)
    history: tuple = ()
    for i, w in enumerate(RAW):
        x, eps, z = rng.standard_normal((3, 8), dtype=np.float32)
        x_next, x0, new_history = apply_step(table, i, x, eps, history, z if i < table.noise_steps else None)
        expected_x0 = (x - w[1] * eps) / w[0]
        prev1, prev2 = (*history, 0.0, 0.0)[:2]
        expected = w[2] * x + w[3] * eps + w[4] * expected_x0 + w[5] * prev1 + w[6] * prev2 + w[7] * z
        assert x_next.dtype == np.float32 and x0.dtype == np.float32
        np.testing.assert_allclose(x0, expected_x0, rtol=1e-6)
        np.testing.assert_allclose(x_next, expected, rtol=1e-5, atol=1e-6)
        assert new_history[0] is x0 and new_history[1:] == tuple(history[:1])
        history = new_history


def test_apply_step_starts_from_zero_history_wants_its_noise_and_steps_in_order():
    table = StepTable(np.array([9, 5, 2]), RAW, history=2, clip_x0=False, noise_steps=1)
    x, eps, z = np.random.default_rng(3).standard_normal((3, 8))
    zeros = (np.zeros(8), np.zeros(8))
    assert np.array_equal(apply_step(table, 0, x, eps, zeros, z)[0], apply_step(table, 0, x, eps, (), z)[0])
    # step 2 takes no z: one passed is ignored
    assert np.array_equal(apply_step(table, 2, x, eps, zeros, z)[0], apply_step(table, 2, x, eps, zeros)[0])
    with pytest.raises(ValueError, match="pass its noise"):
        apply_step(table, 0, x, eps)
    with pytest.raises(ValueError, match="steps must come in order"):
        apply_step(table, 2, x, eps, zeros[:1])
    solver = make_scheduler("dpmpp", TINY, 3)
    with pytest.raises(ValueError, match="steps must come in order"):
        solver.step(eps, 1, x)


def test_apply_step_clips_x0_and_rederives_eps():
    w = np.zeros((1, len(STEP_COLUMNS)))
    w[0, [COLUMN["sqrt_abar"], COLUMN["sqrt_one_minus_abar"], COLUMN["eps"]]] = 0.6, 0.8, 1.0
    table = StepTable(np.array([3]), w, history=0, clip_x0=True, noise_steps=0)
    x, eps = np.float32([0.0, 0.3, 2.0]), np.float32([-3.0, 0.1, 0.0])
    x_next, x0, _ = apply_step(table, 0, x, eps)
    np.testing.assert_allclose(x0, [1.0, (0.3 - 0.08) / 0.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(x_next, (x - 0.6 * x0) / 0.8, rtol=1e-6)


# ---- the table-driven steps are the pre-table formulas ----------------------------------------------------
class PreTableSteps:
    """The step bodies of runtime/schedulers.py before the step tables (commit 403b46e), as the reference."""

    def __init__(self, name: str, tables: ScheduleTables, timesteps: np.ndarray, eta: float, clip_x0: bool):
        self.name, self.tables, self.timesteps, self.eta, self.clip_x0 = name, tables, list(timesteps), eta, clip_x0
        self._last = None

    def _abar(self, t):
        i = self.timesteps.index(t)
        prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else None
        return float(self.tables.alphas_cumprod[t]), 1.0 if prev is None else float(self.tables.alphas_cumprod[prev])

    def _predict(self, eps, x, abar):
        x0 = (x - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
        if not self.clip_x0:
            return x0, eps
        x0 = np.clip(x0, -1.0, 1.0)
        return x0, (x - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)

    def step(self, eps, t, x, noise):
        return getattr(self, self.name)(eps, t, x, noise)

    def ddpm(self, eps, t, x, noise):
        abar, abar_prev = self._abar(t)
        if self.clip_x0:
            _, eps = self._predict(eps, x, abar)
        alpha = abar / abar_prev
        beta = 1.0 - alpha
        mean = (x - (beta / math.sqrt(1.0 - abar)) * eps) / math.sqrt(alpha)
        if abar_prev == 1.0:
            return mean
        variance = beta * (1.0 - abar_prev) / (1.0 - abar)
        return mean + math.sqrt(variance) * noise

    def ddim(self, eps, t, x, noise):
        abar, abar_prev = self._abar(t)
        x0, eps = self._predict(eps, x, abar)
        variance = self.eta**2 * (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)
        direction = math.sqrt(max(1.0 - abar_prev - variance, 0.0))
        x_prev = math.sqrt(abar_prev) * x0 + direction * eps
        if variance == 0.0:
            return x_prev
        return x_prev + math.sqrt(variance) * noise

    def dpmpp(self, eps, t, x, noise):
        half_log_snr = lambda abar: 0.5 * math.log(abar / (1.0 - abar))  # noqa: E731
        abar, abar_prev = self._abar(t)
        x0, _ = self._predict(eps, x, abar)
        last, self._last = self._last, (x0, half_log_snr(abar))
        if abar_prev == 1.0:
            return x0
        h = half_log_snr(abar_prev) - half_log_snr(abar)
        if last is not None:
            x0_last, lambda_last = last
            half_inverse_r = 0.5 * h / (half_log_snr(abar) - lambda_last)
            x0 = (1.0 + half_inverse_r) * x0 - half_inverse_r * x0_last
        sigma_ratio = math.sqrt((1.0 - abar_prev) / (1.0 - abar))
        return sigma_ratio * x - math.sqrt(abar_prev) * math.expm1(-h) * x0


@pytest.mark.parametrize("timesteps, steps", [(3, 1), (3, 2), (3, 3), (40, 1), (40, 2), (40, 7), (40, 40),
                                              (1000, 1), (1000, 3), (1000, 20)])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("name, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0), ("dpmpp", 0.0)])
def test_table_steps_are_the_pre_table_formulas(timesteps, steps, spacing, clip_x0, name, eta):
    """float64 inputs: in float32 both sides round x0 (up to ~300 at the first of 1-3 steps from t = 999)
    differently, by a few ulps of it."""
    tables = TINY if timesteps == 3 else ScheduleTables.from_name("linear", timesteps)
    scheduler = make_scheduler(name, tables, steps, eta=eta, spacing=spacing, clip_x0=clip_x0)
    reference = PreTableSteps(name, tables, scheduler.timesteps, eta, clip_x0)
    rng = np.random.default_rng(steps)
    for t in scheduler.timesteps:
        x, eps, z = 1.5 * rng.standard_normal((3, 64))
        assert np.abs(scheduler.step(eps, int(t), x, z) - reference.step(eps, int(t), x, z)).max() <= 1e-6


# ---- first-order steps reduce to DDIM and DDPM --------------------------------------------------------------
@pytest.mark.parametrize("steps", [2, 5, 20, 40])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("clip_x0", [False, True])
def test_first_steps_are_ddim_and_the_sde_first_step_is_ddpm(steps, spacing, clip_x0):
    """First order, DPM-Solver++ is DDIM with eta = 0 and SDE-DPM-Solver++ is DDIM with eta = 1, which is
    the (respaced) DDPM step: the same function of (x, eps, z), through different columns."""
    def first_step(name, eta=0.0):
        scheduler = make_scheduler(name, LINEAR40, steps, eta=eta, spacing=spacing, clip_x0=clip_x0)
        return scheduler.step(eps, int(scheduler.timesteps[0]), x, z)

    x, eps, z = 1.5 * np.random.default_rng(steps).standard_normal((3, 64))
    np.testing.assert_allclose(first_step("dpmpp"), first_step("ddim"), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(first_step("dpmpp3m"), first_step("ddim"), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(first_step("dpmpp-sde"), first_step("ddpm"), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(first_step("dpmpp-sde"), first_step("ddim", eta=1.0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("steps", [4, 14, 15, 20])
def test_3m_is_2m_on_its_second_step_and_below_15_steps_on_the_last_but_one(steps):
    two, three = make_scheduler("dpmpp", LINEAR40, steps), make_scheduler("dpmpp3m", LINEAR40, steps)
    rng = np.random.default_rng(steps)
    differs = []
    for i, t in enumerate(two.timesteps):
        x, eps = rng.standard_normal((2, 16))
        if not np.array_equal(two.step(eps, int(t), x), three.step(eps, int(t), x)):
            differs.append(i)
    assert differs == list(range(2, steps - 1 - (steps < 15)))  # the third-order steps


# ---- timestep spacing --------------------------------------------------------------------------------
TEN = ScheduleTables.from_name("linear", 10).alphas_cumprod
TUTORIAL = ScheduleTables.from_name("linear", 200)


def test_spacings_on_a_small_example():
    assert spaced_timesteps(TEN, 3, "linspace").tolist() == [9, 4, 0]  # round(0, 4.5, 9), half to even
    assert spaced_timesteps(TEN, 3, "leading").tolist() == [6, 3, 0]
    assert spaced_timesteps(TEN, 3, "trailing").tolist() == [9, 6, 2]


def half_log_snr(t: np.ndarray, tables: ScheduleTables = TUTORIAL) -> np.ndarray:
    abar = tables.alphas_cumprod[t]
    return 0.5 * np.log(abar / (1.0 - abar))


@pytest.mark.parametrize("steps", [3, 4, 5, 10])
def test_logsnr_spacing_is_even_in_log_snr_up_to_rounding(steps):
    chosen = spaced_timesteps(TUTORIAL.alphas_cumprod, steps, "logsnr")
    assert chosen[0] == 199 and chosen[-1] == 0
    levels = half_log_snr(chosen)
    step = (levels[-1] - levels[0]) / (steps - 1)
    # each timestep is the nearest one to its level: within half a timestep's log-SNR change of it
    slope = np.abs(np.diff(half_log_snr(np.arange(200)))).max()
    assert np.abs(levels - (levels[0] + step * np.arange(steps))).max() <= slope / 2 + 1e-12
    assert spaced_timesteps(TUTORIAL.alphas_cumprod, 3, "logsnr").tolist() == [199, 21, 0]


def test_karras_spacing_is_even_in_sigma_to_the_one_over_rho():
    chosen = spaced_timesteps(TUTORIAL.alphas_cumprod, 4, "karras")
    abar = TUTORIAL.alphas_cumprod
    sigma = np.sqrt((1 - abar) / abar)
    ramp = sigma[-1] ** (1 / 7) + np.linspace(0, 1, 4) * (sigma[0] ** (1 / 7) - sigma[-1] ** (1 / 7))
    nearest = [int(np.abs(np.log(sigma) - 7 * np.log(r)).argmin()) for r in ramp]
    assert chosen.tolist() == nearest == [199, 80, 14, 0]
    # rho = 7 spends more of the steps at low noise than even log-SNR steps do
    assert np.all(chosen[1:-1] >= spaced_timesteps(abar, 4, "logsnr")[1:-1])


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_noise_level_spacings_follow_the_schedule_not_the_index(spacing):
    cosine = ScheduleTables.from_name("cosine", 200).alphas_cumprod
    assert not np.array_equal(spaced_timesteps(cosine, 5, spacing), spaced_timesteps(TUTORIAL.alphas_cumprod, 5, spacing))


@settings(max_examples=60, deadline=None)
@given(timesteps=st.integers(2, 1000), data=st.data(), spacing=st.sampled_from(SPACINGS),
       schedule=st.sampled_from(["linear", "cosine", "quadratic", "sigmoid"]))
def test_spaced_timesteps_are_distinct_descending_and_in_range(timesteps, data, spacing, schedule):
    steps = data.draw(st.integers(1, timesteps))
    chosen = spaced_timesteps(ScheduleTables.from_name(schedule, timesteps).alphas_cumprod, steps, spacing)
    assert len(chosen) == steps and np.all(np.diff(chosen) < 0)
    assert 0 <= chosen[-1] and chosen[0] <= timesteps - 1
    if steps == timesteps:
        assert chosen.tolist() == list(range(timesteps - 1, -1, -1))
    if spacing in ("trailing", "logsnr", "karras"):
        assert chosen[0] == timesteps - 1
    if spacing in ("logsnr", "karras") and steps > 1:
        assert chosen[-1] == 0


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


def run_with_oracle(scheduler, x: np.ndarray, rng=None, noise=None) -> np.ndarray:
    """Sample through the oracle; step noise from `noise` (one z per stochastic step) or else drawn from `rng`."""
    noise = iter(noise if noise is not None else [])
    for index, t in enumerate(scheduler.timesteps):
        z = None
        if index < scheduler.noise_steps:
            z = next(noise) if rng is None else rng.standard_normal(x.shape, dtype=np.float32)
        x = scheduler.step(oracle_eps(x, int(t)), int(t), x, z)
    return x


@pytest.mark.parametrize("name, steps, eta", [("ddpm", None, 0.0), ("ddpm", 250, 0.0), ("ddim", 200, 0.0),
                                              ("ddim", 250, 1.0), ("dpmpp", 25, 0.0), ("dpmpp-sde", 25, 0.0),
                                              ("dpmpp3m", 50, 0.0)])
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


# ---- Brownian coupling: runs with any step count on one noise path -------------------------------------
@pytest.mark.parametrize("name, steps, spacing", [("ddpm", 50, "trailing"), ("dpmpp-sde", 20, "trailing"),
                                                  ("dpmpp-sde", 7, "linspace"), ("ddim", 13, "leading")])
def test_coupled_noise_is_fresh_noise_for_one_run(name, steps, spacing):
    """Unit-norm rows on disjoint fine steps: the coupled z are independent N(0, I), as without coupling."""
    table = make_scheduler(name, LONG, steps, eta=1.0 if name == "ddim" else 0.0, spacing=spacing).table()
    weights = brownian_coupling(table, LONG)
    assert weights.shape == (table.noise_steps, LONG.timesteps - 1)
    np.testing.assert_allclose(weights @ weights.T, np.eye(table.noise_steps), atol=1e-12)
    assert ((weights != 0).sum(axis=0) <= 1).all() and (weights >= 0).all()


def test_the_full_ddpm_chain_keeps_its_own_noise():
    table = make_scheduler("ddpm", LONG).table()
    np.testing.assert_array_equal(brownian_coupling(table, LONG), np.eye(LONG.timesteps - 1))


@pytest.mark.parametrize("name, steps, at_least", [("ddpm", 50, 0.95), ("dpmpp-sde", 20, 0.85), ("dpmpp-sde", 10, 0.7)])
def test_coupled_runs_follow_the_full_chain_and_fresh_noise_does_not(name, steps, at_least):
    """On the Gaussian oracle, a few-step run on the coupled path lands near the T-step DDPM chain's sample from the
    same x_T (correlation 0.98 / 0.91 / 0.80 measured); with the same z sequence used in loop order it is unrelated."""
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal(4000, dtype=np.float32)
    fine = rng.standard_normal((LONG.timesteps - 1, 4000), dtype=np.float32)
    full = run_with_oracle(make_scheduler("ddpm", LONG), x_T, noise=fine)
    scheduler = make_scheduler(name, LONG, steps)
    coupled = run_with_oracle(scheduler, x_T, noise=brownian_coupling(scheduler.table(), LONG) @ fine)
    in_loop_order = run_with_oracle(scheduler, x_T, noise=fine[:scheduler.noise_steps])
    assert np.corrcoef(coupled, full)[0, 1] > at_least
    assert abs(np.corrcoef(in_loop_order, full)[0, 1]) < 0.1
