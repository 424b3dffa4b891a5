"""Count the FLOPs of an ONNX graph (Conv, ConvTranspose, MatMul, Gemm; 2 FLOPs per multiply-add).

Shapes come from ONNX shape inference after pinning the symbolic batch axis to a number, so the
count is exact for the exported U-Net (its reshapes are constants).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
from onnx import shape_inference


def _shapes(model: onnx.ModelProto, batch: int) -> Dict[str, List[int]]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _node_flops(node: onnx.NodeProto, shapes: Dict[str, List[int]]) -> int:
    def shape(index: int, output: bool = False) -> List[int]:
        name = (node.output if output else node.input)[index]
        if name not in shapes:
            raise ValueError(f"no static shape for {name!r} (input of {node.op_type} {node.name!r})")
        return shapes[name]

    if node.op_type == "Conv":
        weight = shape(1)  # (C_out, C_in / group, kh, kw)
        return 2 * int(np.prod(shape(0, output=True))) * int(np.prod(weight[1:]))
    if node.op_type == "ConvTranspose":
        weight = shape(1)  # (C_in, C_out / group, kh, kw): every input pixel scatters into a kernel
        return 2 * int(np.prod(shape(0))) * int(np.prod(weight[1:]))
    if node.op_type == "MatMul":
        return 2 * int(np.prod(shape(0, output=True))) * shape(0)[-1]
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        a = shape(0)
        return 2 * int(np.prod(shape(0, output=True))) * (a[0] if trans_a else a[1])
    return 0


def count_flops(model: onnx.ModelProto | str | Path, batch: int = 1) -> int:
    """FLOPs of one forward pass at `batch` (2 per multiply-accumulate of Conv/ConvTranspose/MatMul/Gemm)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    shapes = _shapes(model, batch)
    return sum(_node_flops(node, shapes) for node in model.graph.node)
