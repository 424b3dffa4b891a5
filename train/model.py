"""The tutorial's U-Net noise predictor eps_theta(x_t, t), written so that one network both trains
and exports (MindIR, ONNX, MindSpore Lite) with no second "export variant" that could drift.

Fixes against the tutorial (docs/tutorial-fixes.md lists them all):
- `Block` (the ResNet block) is unused by the ConvNeXt U-Net and is left out; its stray
  `self.proj = c(...)` line (an undefined name) therefore goes too.
- Parameters in nested CellLists got duplicate names (`downs.0.0.mlp.1.weight` and
  `ups.0.0.mlp.1.weight` were both `0.0.mlp.1.weight`): `Unet` renames every parameter to its
  full attribute path, which is unique and stable.
- `x.var(1, keepdims=True)` changes default from biased to unbiased in future MindSpore: the
  variance here is the explicit biased mean of squares, as GroupNorm/LayerNorm define it.
- `ops.inv` and `nn.GroupNorm` have no ONNX converter: training runs MindSpore's fused `ops.group_norm`,
  and the exporters switch every `GroupNorm` to mean/var/sqrt/div first (`use_exportable_norms`): the same
  function, the same parameters, today's ONNX graph.
- Every reshape uses -1 for the batch axis (no `expand_dims`, no `x.shape[0]`), so exported graphs
  take any batch size.
- The attention output projections are matmuls over a (out, in, 1, 1) weight instead of 1x1
  convolutions (same parameters, same checkpoint), which MindSpore Lite 2.0.0's converter
  needs (its Conv2DFusion shape inference fails after Split -> BatchMatMul -> Reshape).
"""
from __future__ import annotations

import math

import numpy as np

from . import prepare_mindspore
prepare_mindspore()  # before MindSpore loads: oneDNN ISA cap, quiet logs
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Uniform, initializer

from ..runtime.config import ModelConfig

NORM_EPS = 1e-5


def group_norm(x: Tensor, num_groups: int, eps: float = NORM_EPS) -> Tensor:
    """Normalise (B, C, H, W) over each group of channels and all pixels, biased variance."""
    _, c, h, w = x.shape
    grouped = x.reshape((-1, num_groups, (c // num_groups) * h * w))
    mean = grouped.mean(axis=2, keep_dims=True)
    centred = grouped - mean
    var = (centred * centred).mean(axis=2, keep_dims=True)
    return (centred / ops.sqrt(var + eps)).reshape((-1, c, h, w))


class GroupNorm(nn.Cell):
    """`nn.GroupNorm`'s parameters (gamma, beta) in one of two spellings of one function: MindSpore's fused
    `ops.group_norm` (`fused`, the default: training's speed), or exportable primitives (`fused=False`)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = NORM_EPS):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.fused = True
        self.gamma = Parameter(initializer("ones", (num_channels,)), name="gamma")
        self.beta = Parameter(initializer("zeros", (num_channels,)), name="beta")

    def construct(self, x: Tensor) -> Tensor:
        if self.fused:
            return ops.group_norm(x, self.num_groups, self.gamma, self.beta, self.eps)
        y = group_norm(x, self.num_groups, self.eps)
        return y * self.gamma.reshape((1, -1, 1, 1)) + self.beta.reshape((1, -1, 1, 1))


class ChannelLayerNorm(nn.Cell):
    """The tutorial's `LayerNorm`: normalise over channels per pixel, scale by g (no bias)."""

    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.g = Parameter(initializer("ones", (1, dim, 1, 1)), name="g")

    def construct(self, x: Tensor) -> Tensor:
        mean = x.mean(axis=1, keep_dims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=1, keep_dims=True)
        return centred / ops.sqrt(var + self.eps) * self.g


class PointwiseProjection(nn.Cell):
    """A 1x1 convolution applied as a matmul on (B, C_in, N) tokens; Conv2d's parameter layout."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.weight = Parameter(initializer(HeUniform(math.sqrt(5)), (dim_out, dim_in, 1, 1)), name="weight")
        bound = 1 / math.sqrt(dim_in)
        self.bias = Parameter(initializer(Uniform(bound), (dim_out,)), name="bias")

    def construct(self, tokens: Tensor) -> Tensor:
        """(B, C_in, N) -> (B, C_out, N)."""
        weight = self.weight.reshape((1, self.weight.shape[0], -1))
        return ops.matmul(weight, tokens) + self.bias.reshape((1, -1, 1))


class SinusoidalPositionEmbeddings(nn.Cell):
    def __init__(self, dim: int):
        super().__init__()
        half_dim = dim // 2
        scale = math.log(10000) / (half_dim - 1)
        self.freqs = Tensor(np.exp(np.arange(half_dim) * -scale).reshape(1, -1), ms.float32)

    def construct(self, time: Tensor) -> Tensor:
        angles = time.astype(ms.float32).reshape((-1, 1)) * self.freqs
        return ops.concat((ops.sin(angles), ops.cos(angles)), axis=-1)


class ConvNextBlock(nn.Cell):
    """Depthwise 7x7 conv, + time condition, GroupNorm, 3x3 conv, GELU, GroupNorm, 3x3 conv; residual."""

    def __init__(self, dim: int, dim_out: int, *, time_emb_dim: int | None = None, mult: int = 2, norm: bool = True):
        super().__init__()
        self.mlp = nn.SequentialCell(nn.GELU(), nn.Dense(time_emb_dim, dim)) if time_emb_dim else None
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, group=dim, pad_mode="pad")
        self.net = nn.SequentialCell(
            GroupNorm(1, dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1, pad_mode="pad"),
            nn.GELU(),
            GroupNorm(1, dim_out * mult),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1, pad_mode="pad"),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def construct(self, x: Tensor, time_emb: Tensor | None = None) -> Tensor:
        h = self.ds_conv(x)
        if self.mlp is not None and time_emb is not None:
            h = h + self.mlp(time_emb).reshape((-1, h.shape[1], 1, 1))
        return self.net(h) + self.res_conv(x)


def _split_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, 3*heads*d, H, W) -> three (B, heads, d, H*W)."""
    _, c3, h, w = qkv.shape
    dim_head = c3 // 3 // heads
    q, k, v = ops.split(qkv.reshape((-1, 3 * heads, dim_head, h * w)), heads, axis=1)
    return q, k, v


class _HeadsAttention(nn.Cell):
    """What both attentions share: the bias-free 1x1 q/k/v projection, split into heads."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_qkv = nn.Conv2d(dim, dim_head * heads * 3, 1, pad_mode="valid", has_bias=False)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _split_heads(self.to_qkv(x), self.heads)


class Attention(_HeadsAttention):
    """Softmax multi-head self-attention over pixels (the U-Net's middle)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__(dim, heads, dim_head)
        self.to_out = PointwiseProjection(dim_head * heads, dim)

    def construct(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        q, k, v = self.qkv(x)
        sim = ops.BatchMatMul(transpose_a=True)(q * self.scale, k)  # b h i j
        attn = ops.softmax(sim, axis=-1)
        out = ops.BatchMatMul(transpose_b=True)(v, attn)  # b h d i
        out = out.reshape((-1, self.heads * out.shape[2], h * w))
        return self.to_out(out).reshape((-1, c, h, w))


class LinearAttention(_HeadsAttention):
    """Linear attention (Shen et al. 2018) followed by the output projection and a channel LayerNorm."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__(dim, heads, dim_head)
        self.to_out = nn.SequentialCell(PointwiseProjection(dim_head * heads, dim), ChannelLayerNorm(dim))

    def construct(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        q, k, v = self.qkv(x)
        q = ops.softmax(q, axis=-2) * self.scale
        k = ops.softmax(k, axis=-1)
        v = v / (h * w)
        context = ops.BatchMatMul(transpose_b=True)(k, v)  # b h d e
        out = ops.BatchMatMul(transpose_a=True)(context, q)  # b h e n
        out = out.reshape((-1, self.heads * out.shape[2], h * w))
        projection, norm = self.to_out[0], self.to_out[1]
        return norm(projection(out).reshape((-1, c, h, w)))


class PreNorm(nn.Cell):
    def __init__(self, dim: int, fn: nn.Cell):
        super().__init__()
        self.fn = fn
        self.norm = GroupNorm(1, dim)

    def construct(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class Residual(nn.Cell):
    def __init__(self, fn: nn.Cell):
        super().__init__()
        self.fn = fn

    def construct(self, x: Tensor) -> Tensor:
        return self.fn(x) + x


def Downsample(dim: int) -> nn.Cell:  # noqa: N802 - the tutorial's name
    return nn.Conv2d(dim, dim, 4, 2, pad_mode="pad", padding=1)


def Upsample(dim: int) -> nn.Cell:  # noqa: N802 - the tutorial's name
    return nn.Conv2dTranspose(dim, dim, 4, 2, pad_mode="pad", padding=1)


class Unet(nn.Cell):
    """eps_theta(x_t, t): (B, C, H, W) float32 and (B,) int32 timesteps -> predicted noise (B, C, H, W)."""

    def __init__(self, dim: int, init_dim: int | None = None, out_dim: int | None = None,
                 dim_mults: tuple[int, ...] = (1, 2, 4, 8), channels: int = 3,
                 with_time_emb: bool = True, convnext_mult: int = 2):
        super().__init__()
        self.channels = channels
        init_dim = init_dim if init_dim is not None else dim // 3 * 2
        self.init_conv = nn.Conv2d(channels, init_dim, 7, padding=3, pad_mode="pad", has_bias=True)

        dims = [init_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        time_dim = dim * 4 if with_time_emb else None

        def block(dim_in: int, dim_out: int) -> ConvNextBlock:
            return ConvNextBlock(dim_in, dim_out, time_emb_dim=time_dim, mult=convnext_mult)

        self.time_mlp = nn.SequentialCell(
            SinusoidalPositionEmbeddings(dim), nn.Dense(dim, time_dim), nn.GELU(), nn.Dense(time_dim, time_dim)
        ) if with_time_emb else None

        num_resolutions = len(in_out)
        self.downs = nn.CellList([
            nn.CellList([
                block(dim_in, dim_out),
                block(dim_out, dim_out),
                Residual(PreNorm(dim_out, LinearAttention(dim_out))),
                Downsample(dim_out) if ind < num_resolutions - 1 else nn.Identity(),
            ])
            for ind, (dim_in, dim_out) in enumerate(in_out)
        ])
        mid_dim = dims[-1]
        self.mid_block1 = block(mid_dim, mid_dim)
        self.mid_attn = Residual(PreNorm(mid_dim, Attention(mid_dim)))
        self.mid_block2 = block(mid_dim, mid_dim)
        # As in the tutorial, every up stage upsamples (the `is_last` test there is never true), so the
        # deepest skip is consumed first and the first (full-resolution) skip is not used.
        self.ups = nn.CellList([
            nn.CellList([
                block(dim_out * 2, dim_in),
                block(dim_in, dim_in),
                Residual(PreNorm(dim_in, LinearAttention(dim_in))),
                Upsample(dim_in),
            ])
            for dim_in, dim_out in reversed(in_out[1:])
        ])
        self.final_conv = nn.SequentialCell(
            ConvNextBlock(dim, dim, mult=convnext_mult),
            nn.Conv2d(dim, out_dim if out_dim is not None else channels, 1),
        )
        assign_unique_parameter_names(self)

    def construct(self, x: Tensor, time: Tensor) -> Tensor:
        x = self.init_conv(x)
        t = self.time_mlp(time) if self.time_mlp is not None else None
        skips = []
        for block1, block2, attn, downsample in self.downs:
            x = attn(block2(block1(x, t), t))
            skips.append(x)
            x = downsample(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, t)), t)
        for index, (block1, block2, attn, upsample) in enumerate(self.ups):
            x = ops.concat((x, skips[len(skips) - 1 - index]), 1)
            x = upsample(attn(block2(block1(x, t), t)))
        return self.final_conv(x)


def assign_unique_parameter_names(cell: nn.Cell) -> None:
    """Name each parameter by its full attribute path (fixes the tutorial's duplicate names)."""
    for path, param in cell.parameters_and_names():
        param.name = path


def use_exportable_norms(net: nn.Cell) -> nn.Cell:
    """Switch every `GroupNorm` in `net` to its exportable spelling (MindSpore's ONNX exporter has no GroupNorm);
    returns `net`."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, GroupNorm):
            cell.fused = False
    return net


def build_unet(config: ModelConfig) -> Unet:
    config.validate()
    return Unet(dim=config.dim, init_dim=config.init_dim, out_dim=config.out_dim, dim_mults=config.dim_mults,
                channels=config.channels, with_time_emb=config.with_time_emb, convnext_mult=config.convnext_mult)


def count_parameters(cell: nn.Cell) -> int:
    return int(sum(np.prod(p.shape) for p in cell.trainable_params()))
