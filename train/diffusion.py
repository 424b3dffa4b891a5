"""The tutorial's forward process, training loss and reference sampler, in MindSpore.

`reference_sample` is the tutorial's `p_sample_loop` (ancestral DDPM). It is the source of truth
for the runtime's numeric checks, so its noise comes from outside: x_T and one z per step with
t > 0, in loop order (t = T-1 ... 1). `draw_sampling_noise` takes them from the runtime's own
`draw_noise` (the portable generator, docs/noise.md), so one seed gives identical noise on both sides.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from ..runtime.pipeline import draw_noise
from ..runtime.schedules import ScheduleTables


class ForwardProcess(nn.Cell):
    """q(x_t | x_0) and the training loss, with the schedule tables held as float32 Tensors."""

    def __init__(self, tables: ScheduleTables, loss: str = "huber"):
        super().__init__()
        self.sqrt_alphas_cumprod = Tensor(tables.sqrt_alphas_cumprod, ms.float32)
        self.sqrt_one_minus_alphas_cumprod = Tensor(tables.sqrt_one_minus_alphas_cumprod, ms.float32)
        self.p2_loss_weight = Tensor(tables.p2_loss_weight, ms.float32)
        # Huber = SmoothL1 with beta 1, as in the tutorial; L2 is the DDPM paper's loss.
        self.loss_fn = nn.SmoothL1Loss(reduction="none") if loss == "huber" else nn.MSELoss(reduction="none")

    @staticmethod
    def extract(table: Tensor, t: Tensor) -> Tensor:
        """Gather table[t] as (B, 1, 1, 1)."""
        return ops.gather(table, t, 0).reshape((-1, 1, 1, 1))

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return (self.extract(self.sqrt_alphas_cumprod, t) * x_start
                + self.extract(self.sqrt_one_minus_alphas_cumprod, t) * noise)

    def p_losses(self, model: nn.Cell, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        predicted = model(self.q_sample(x_start, t, noise), t)
        loss = self.loss_fn(predicted, noise).reshape((x_start.shape[0], -1))
        return (loss * ops.gather(self.p2_loss_weight, t, 0).reshape((-1, 1))).mean()


def draw_sampling_noise(seed: int, shape: Tuple[int, ...], timesteps: int) -> Tuple[np.ndarray, np.ndarray]:
    """x_T, then the z of each ancestral step t = T-1 ... 1 as one (T-1, *shape) array: the runtime's noise."""
    x_T, step_noise = draw_noise(shape, timesteps - 1, seed)
    return x_T, np.stack(list(step_noise))


def reference_sample(model: nn.Cell, tables: ScheduleTables, x_T: np.ndarray, step_noise: Sequence[np.ndarray],
                     on_step: Optional[Callable[[int, np.ndarray], None]] = None) -> np.ndarray:
    """The tutorial's p_sample_loop with given noise; returns x_0 as float32 on the [-1, 1] scale.

    `on_step(t, x)` sees each x_{t-1} (for progress bars and denoising GIFs).
    """
    T = tables.timesteps
    if len(step_noise) != T - 1:
        raise ValueError(f"need {T - 1} step noises, got {len(step_noise)}")
    coefficient = lambda table, t: Tensor(np.float32(table[t]))  # noqa: E731 - a scalar per step
    model = ms.jit(model)  # compiled once for the loop's fixed shape: several times PyNative's speed
    x = Tensor(np.asarray(x_T, np.float32))
    batch = x.shape[0]
    for t in reversed(range(T)):
        eps = model(x, Tensor(np.full((batch,), t, np.int32)))
        mean = coefficient(tables.sqrt_recip_alphas, t) * (
            x - coefficient(tables.betas, t) * eps / coefficient(tables.sqrt_one_minus_alphas_cumprod, t))
        if t == 0:
            x = mean
        else:
            z = Tensor(np.asarray(step_noise[T - 1 - t], np.float32))
            x = mean + ops.sqrt(coefficient(tables.posterior_variance, t)) * z
        if on_step is not None:
            on_step(t, x.asnumpy())
    return x.asnumpy()

