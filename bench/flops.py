"""Count the FLOPs of an ONNX graph (Conv, ConvTranspose, MatMul, Gemm; 2 FLOPs per multiply-add).

Shapes come from ONNX shape inference after pinning the symbolic batch axis to a number, so the
count is exact for the exported U-Net (its reshapes are constants).
"""
from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Dict, List

import onnx


def _static_shapes(model: onnx.ModelProto, batch: int) -> Dict[str, List[int]]:
    """Every tensor's shape that shape inference pins down, with the inputs' symbolic batch axis set to `batch`."""
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    for tensor in pinned.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    graph = onnx.shape_inference.infer_shapes(pinned).graph
    shapes = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
              for info in [*graph.input, *graph.value_info, *graph.output]
              if all(d.HasField("dim_value") for d in info.type.tensor_type.shape.dim)}
    return {**shapes, **{init.name: list(init.dims) for init in graph.initializer}}


def count_flops(model: onnx.ModelProto | str | Path, batch: int = 1) -> int:
    """FLOPs of one forward pass at `batch` (2 per multiply-accumulate of Conv/ConvTranspose/MatMul/Gemm)."""
    model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    shapes, total = _static_shapes(model, batch), 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        missing = [name for name in (*node.input[:2], node.output[0]) if name not in shapes]
        if missing:
            raise ValueError(f"no static shape for {missing[0]!r} (at {node.op_type} {node.name!r})")
        (x, w), y = (shapes[name] for name in node.input[:2]), shapes[node.output[0]]
        if node.op_type == "Conv":  # weight (C_out, C_in / group, kh, kw): a multiply-add per weight per output pixel
            total += 2 * prod(y) * prod(w[1:])
        elif node.op_type == "ConvTranspose":  # weight (C_in, C_out / group, kh, kw): every input scatters a kernel
            total += 2 * prod(x) * prod(w[1:])
        elif node.op_type == "MatMul":
            total += 2 * prod(y) * x[-1]
        else:  # Gemm: (M, K) x (K, N), or A transposed
            transposed = any(a.name == "transA" and a.i for a in node.attribute)
            total += 2 * prod(y) * x[0 if transposed else 1]
    return total
