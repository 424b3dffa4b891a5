"""The worker side of data-parallel training under msrun: MindSpore's own distributed engine.

Each worker joins the msrun cluster (`mindspore.communication.init()`), switches to
DATA_PARALLEL with `gradients_mean=True`, and trains on its contiguous slice of every global batch
(the batch `BatchSampler` draws for that step). Its step averages the loss and the gradients over
all workers with `nn.DistributedGradReducer`: a jit step built on `value_and_grad` gets no
automatic all-reduce on MindSpore 2.10, so the reducer is explicit. The averaged gradient is the
gradient of the mean loss over the global batch, so N workers follow single-device training on the
same global batch, to float rounding. Only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import prepare_mindspore
prepare_mindspore()  # before MindSpore loads: oneDNN ISA cap, quiet logs
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..runtime.errors import ToolkitError
from ..runtime.files import atomic_path

from .launch import check_batch_split, msrun_worker_count

# Test-only: when set to a directory, every rank writes its final weights there as rank<N>.npz.
RANK_WEIGHTS_ENV = "MS_DDPM_RANK_WEIGHTS_DIR"


@dataclass(frozen=True)
class DistributedContext:
    """Which worker this process is; the default is plain single-device training."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and messages."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, *arrays: np.ndarray) -> tuple:
        """This worker's contiguous slice of each global-batch array."""
        size = len(arrays[0]) // self.world_size
        return tuple(array[self.rank * size:(self.rank + 1) * size] for array in arrays)


def join_msrun_cluster(batch_size: int) -> DistributedContext:
    """Join the msrun job as one data-parallel worker (the msrun scheduler process exits in here)."""
    workers = msrun_worker_count()
    check_batch_split(batch_size, workers)  # before init(), so every process of the job stops at once
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()
    except RuntimeError as exc:
        raise ToolkitError(f"could not join the msrun cluster at {os.environ['MS_SCHED_HOST']}:"
                           f"{os.environ['MS_SCHED_PORT']}: {str(exc).strip().splitlines()[0]}") from exc
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return DistributedContext(rank=get_rank(), world_size=get_group_size())


class GradientMean(nn.Cell):
    """All-reduce the loss and the gradients to their mean over the workers."""

    def __init__(self, parameters: list, world_size: int):
        super().__init__(auto_prefix=False)
        self.reduce_grads = nn.DistributedGradReducer(parameters)  # mean: gradients_mean=True in the context
        self.sum = ops.AllReduce()
        self.scale = 1.0 / world_size

    def construct(self, loss: Tensor, grads: tuple) -> tuple:
        return self.sum(loss) * self.scale, self.reduce_grads(grads)


def write_rank_weights(net: nn.Cell, context: DistributedContext) -> None:
    """Test hook: with MS_DDPM_RANK_WEIGHTS_DIR set, every rank saves its weights, to compare them."""
    folder = os.environ.get(RANK_WEIGHTS_ENV)
    if folder and context.is_distributed:
        with atomic_path(Path(folder) / f"rank{context.rank}.npz", suffix=".npz") as tmp:
            np.savez(tmp, **{p.name: p.asnumpy() for p in net.trainable_params()})
