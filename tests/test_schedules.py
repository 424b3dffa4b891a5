"""Beta schedules and derived tables against closed forms; the forward process's statistics."""
import math

import numpy as np
import pytest

from ms_ddpm.runtime.config import SCHEDULES
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.schedules import ScheduleTables, beta_schedule, cosine_beta_schedule


def test_linear_schedule_is_the_tutorials():
    betas = beta_schedule("linear", 200)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 199)


def test_quadratic_and_sigmoid_are_monotone_between_the_endpoints():
    for name in ("quadratic", "sigmoid"):
        betas = beta_schedule(name, 50)
        assert np.all(np.diff(betas) > 0) and 1e-4 <= betas[0] and betas[-1] <= 0.02 + 1e-12
    assert np.allclose(np.sqrt(beta_schedule("quadratic", 50)), np.linspace(0.01, math.sqrt(0.02), 50))


def test_cosine_schedule_follows_the_closed_form_alpha_bar():
    T, s = 100, 0.008
    tables = ScheduleTables.from_betas(cosine_beta_schedule(T))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f(t) / f(0) for t in range(1, T + 1)])
    unclipped = slice(0, T - 5)  # the last betas are clipped at 0.9999
    assert np.allclose(tables.alphas_cumprod[unclipped], expected[unclipped], rtol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
def test_tables_match_their_definitions(name):
    tables = ScheduleTables.from_name(name, 30)
    b = tables.betas
    assert np.allclose(tables.alphas_cumprod, np.cumprod(1 - b))
    assert tables.alphas_cumprod_prev[0] == 1.0 and np.allclose(tables.alphas_cumprod_prev[1:], tables.alphas_cumprod[:-1])
    assert np.allclose(tables.sqrt_recip_alphas, 1 / np.sqrt(1 - b))
    assert np.allclose(tables.sqrt_alphas_cumprod ** 2 + tables.sqrt_one_minus_alphas_cumprod ** 2, 1.0)
    assert np.allclose(tables.posterior_variance,
                       b * (1 - tables.alphas_cumprod_prev) / (1 - tables.alphas_cumprod))
    assert tables.posterior_variance[0] == 0.0
    assert np.all(tables.p2_loss_weight == 1.0)


def test_bad_schedules_are_refused():
    with pytest.raises(ToolkitError, match="unknown schedule"):
        beta_schedule("exponential", 10)
    with pytest.raises(ToolkitError):
        ScheduleTables.from_betas(np.array([0.1, 1.5]))


def test_q_sample_has_the_marginal_mean_and_variance():
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps: for constant x0 the sample mean/std match the closed form."""
    from mindspore import Tensor

    from ms_ddpm.train.diffusion import ForwardProcess

    tables = ScheduleTables.from_name("linear", 200)
    forward = ForwardProcess(tables)
    rng = np.random.default_rng(0)
    x0 = np.full((64, 1, 16, 16), 0.7, np.float32)
    for t in (0, 100, 199):
        noise = rng.standard_normal(x0.shape, dtype=np.float32)
        xt = forward.q_sample(Tensor(x0), Tensor(np.full(64, t, np.int32)), Tensor(noise)).asnumpy()
        assert xt.mean() == pytest.approx(0.7 * tables.sqrt_alphas_cumprod[t], abs=0.02)
        assert xt.std() == pytest.approx(tables.sqrt_one_minus_alphas_cumprod[t], rel=0.03)
