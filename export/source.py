"""The MindSpore side of an export: tracing inputs and numpy-in/numpy-out calls of a cell."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from ..train import prepare_mindspore
prepare_mindspore()  # before MindSpore loads: oneDNN ISA cap, quiet logs
import mindspore as ms
from mindspore import Tensor, nn

from ..runtime.config import ModelConfig

from .gate import EpsFn


def example_inputs(model: ModelConfig, batch: Optional[int]) -> Tuple[Tensor, Tensor]:
    """(x, t) to trace with: zeros of batch `batch`, or placeholders with a dynamic batch axis if None."""
    image = (model.channels, model.image_size, model.image_size)
    if batch is None:
        return Tensor(shape=[None, *image], dtype=ms.float32), Tensor(shape=[None], dtype=ms.int32)
    return Tensor(np.zeros((batch, *image), np.float32)), Tensor(np.zeros((batch,), np.int32))


def source_eps(net: nn.Cell, model: ModelConfig) -> EpsFn:
    """The source U-Net as `eps(x, t)`, compiled once (ms.jit) for any batch size: 2x PyNative's speed.

    Sets `net`'s inputs to dynamic-batch placeholders: export `net` before calling this.
    """
    net.set_inputs(*example_inputs(model, None))
    return cell_eps(ms.jit(net))


def cell_eps(cell: Callable[[Tensor, Tensor], Tensor]) -> EpsFn:
    """`eps(x, t)` on numpy arrays, for the source U-Net or a reloaded MindIR GraphCell."""
    return lambda x, t: cell(Tensor(x), Tensor(t)).asnumpy()
