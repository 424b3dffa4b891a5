"""The sampler inside the graph: an exported U-Net eps(x, t) and one scheduler step, as one ONNX model.

A host with no diffusion math (C++ on MindSpore Lite, a browser on onnxruntime-web) samples with one loop,
the same for every scheduler:

    x = x_T; state = zeros(K, N, C, H, W)
    for i in range(S):
        z = fresh noise if i < noise_steps else zeros
        x, x0, state = step_model(x=x, i=[i], z=z, state=state)      # x_next, x0 preview, state_next

Step i reads row i of the scheduler's weight table (`StepTable`, stored in the graph as constants) and
the U-Net's timestep, both with Gather on `i`, then applies `runtime.schedulers.apply_step`:

    x0 = (x - s1 eps) / s0;  with clip_x0: x0 = clip(x0, -1, 1), eps = (x - s0 x0) / s1
    x_next = w_x x + w_eps eps + w_x0 x0 + w_x0_prev1 state[0] + w_x0_prev2 state[1] + w_z z
    state_next = [x0, state[0]][:K]

K = max(history, 1). S, K, noise_steps and the timesteps are in the model's metadata (`METADATA_PREFIX`).
Only ops that MindSpore Lite 2.0.0's ONNX converter takes are added (Gather, Split, Shape, Expand, Mul,
Add, Sub, Div, Clip, Unsqueeze, Concat), no Loop or If, written for the U-Net's own opset (11 or later).
Every input is used, whatever the scheduler: Lite cannot load a model with an unused one. Its converter
turns `i` into int32: a host feeds the index in the dtype the loaded model reports.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime.errors import ToolkitError
from ..runtime.manifest import STEP_INPUTS, STEP_OUTPUTS, TensorSpec
from ..runtime.schedulers import STEP_COLUMNS, StepTable

INPUT_NAMES, OUTPUT_NAMES = STEP_INPUTS, STEP_OUTPUTS  # the manifest defines the step contract's tensor names
UNET_INPUTS = ("x", "t")
UNET_OUTPUT = "eps"
UNET_PREFIX = "unet/"
PREFIX = "step/"
METADATA_PREFIX = "ms_ddpm."
MIN_OPSET = 11  # Clip takes min/max as inputs from opset 11 on


def build_step_model(unet: onnx.ModelProto, table: StepTable, sampler: str = "custom") -> onnx.ModelProto:
    """One sampler step around `unet` (inputs x, t; output eps), following `table`; `sampler` names it."""
    _check_table(table)
    opset = _opset(unet)
    x_info, t_info = _unet_inputs(unet.graph)
    graph = _Builder(opset)
    t = graph.timestep(table.timesteps, t_info.type.tensor_type.elem_type)
    unet_nodes, unet_initializers, eps = _inline(unet.graph, {"x": "x", "t": t})
    graph.nodes += unet_nodes
    weights = graph.weights(table.weights)
    x0, eps = graph.predict_x0(eps, weights, table.clip_x0)
    history = graph.history(max(table.history, 1))
    graph.combine(weights, {"x": "x", "eps": eps, "x0": x0, **history, "z": "z"})
    graph.state_next(x0, history)
    return _model(unet, graph, unet_initializers, _signature(x_info, table.history), _metadata(table, sampler))


def step_model_io(step_model: onnx.ModelProto) -> Tuple[List[TensorSpec], List[TensorSpec]]:
    """The step model's inputs and outputs, as the manifest describes tensors."""
    return [_spec(info) for info in step_model.graph.input], [_spec(info) for info in step_model.graph.output]


def _check_table(table: StepTable) -> None:
    """What StepTable itself does not check: the step divides by sqrt_abar and sqrt_one_minus_abar."""
    if np.any(_column(table.weights, "sqrt_abar") <= 0) or np.any(_column(table.weights, "sqrt_one_minus_abar") <= 0):
        raise ToolkitError("the step table's sqrt_abar and sqrt_one_minus_abar must be > 0")


def _column(weights: np.ndarray, name: str) -> np.ndarray:
    return weights[:, STEP_COLUMNS.index(name)]


def _opset(unet: onnx.ModelProto) -> int:
    opset = next((entry.version for entry in unet.opset_import if entry.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ToolkitError(f"the U-Net's ONNX opset is {opset}; a sampler-step model needs {MIN_OPSET} or later")
    return opset


def _unet_inputs(graph: onnx.GraphProto) -> Tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    inputs = {info.name: info for info in graph.input}
    if any(name not in inputs for name in UNET_INPUTS) or [o.name for o in graph.output] != [UNET_OUTPUT]:
        raise ToolkitError(f"the U-Net must have inputs {', '.join(UNET_INPUTS)} and the one output {UNET_OUTPUT}; "
                           f"got {', '.join(inputs)} -> {', '.join(o.name for o in graph.output)}")
    if any(node.op_type in ("Loop", "If", "Scan") for node in graph.node):
        raise ToolkitError("the U-Net has control flow (Loop/If/Scan), which the step model does not inline")
    return inputs["x"], inputs["t"]


def _inline(graph: onnx.GraphProto, feeds: Dict[str, str]) -> Tuple[List[onnx.NodeProto], List[TensorProto], str]:
    """The U-Net's nodes and initializers, its names prefixed and its inputs fed from `feeds`; and its eps."""
    def rename(name: str) -> str:
        return feeds.get(name) or (UNET_PREFIX + name if name else name)  # "" is an omitted optional input

    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = UNET_PREFIX + node.name if node.name else ""
        copy.input[:] = [rename(name) for name in node.input]
        copy.output[:] = [rename(name) for name in node.output]
        nodes.append(copy)
    initializers = []
    for tensor in graph.initializer:
        copy = TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename(tensor.name)
        initializers.append(copy)
    return nodes, initializers, rename(UNET_OUTPUT)


class _Builder:
    """The step's own nodes and constants, written for one opset."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: Dict[str, TensorProto] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        """A constant (made once per name)."""
        if PREFIX + name not in self.initializers:
            self.initializers[PREFIX + name] = numpy_helper.from_array(value, PREFIX + name)
        return PREFIX + name

    def op(self, op_type: str, inputs: Sequence[str], output: str, **attributes) -> str:
        """One node; `output` is a step-internal name unless it is one of the model's outputs."""
        name = output if output in OUTPUT_NAMES else PREFIX + output
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=PREFIX + output, **attributes))
        return name

    def unsqueeze0(self, tensor: str, output: str) -> str:
        """`tensor` with a new leading axis (axes: an attribute before opset 13, an input from 13)."""
        if self.opset < 13:
            return self.op("Unsqueeze", [tensor], output, axes=[0])
        return self.op("Unsqueeze", [tensor, self.const("axes0", np.array([0], np.int64))], output)

    def timestep(self, timesteps: np.ndarray, dtype: int) -> str:
        """The U-Net's t, (N,): timesteps[i] in t's dtype, repeated over the batch."""
        row = self.op("Gather", [self.const("timesteps", timesteps.astype(helper.tensor_dtype_to_np_dtype(dtype))),
                                 "i"], "t_row")
        shape = self.op("Shape", ["x"], "x_shape")
        batch = self.op("Gather", [shape, self.const("batch_axis", np.array([0], np.int64))], "batch")
        return self.op("Expand", [row, batch], "t")

    def weights(self, weights: np.ndarray) -> Dict[str, str]:
        """Row i of the weight table, one (1, 1, 1, 1) tensor per column (they broadcast over (N, C, H, W))."""
        table = self.const("weights", weights.astype(np.float32).reshape(len(weights), len(STEP_COLUMNS), 1, 1))
        row = self.op("Gather", [table, "i"], "w_row")
        names = [PREFIX + "w_" + column for column in STEP_COLUMNS]
        split = {"num_outputs": len(names)} if self.opset >= 18 else {}  # before 18: equal parts by default
        self.nodes.append(helper.make_node("Split", [row], names, name=PREFIX + "w_split", axis=1, **split))
        return dict(zip(STEP_COLUMNS, names))

    def predict_x0(self, eps: str, w: Dict[str, str], clip: bool) -> Tuple[str, str]:
        """(x0, eps) from the U-Net's eps; with `clip`, x0 in [-1, 1] and eps re-derived from it."""
        s0, s1 = w["sqrt_abar"], w["sqrt_one_minus_abar"]
        noise = self.op("Mul", [s1, eps], "s1_eps")
        x0 = self.op("Div", [self.op("Sub", ["x", noise], "x_minus_s1_eps"), s0], "x0_raw" if clip else "x0")
        if not clip:
            return x0, eps
        bounds = [self.const("clip_min", np.array(-1, np.float32)), self.const("clip_max", np.array(1, np.float32))]
        x0 = self.op("Clip", [x0, *bounds], "x0")
        signal = self.op("Mul", [s0, x0], "s0_x0")
        return x0, self.op("Div", [self.op("Sub", ["x", signal], "x_minus_s0_x0"), s1], "eps_clipped")

    def history(self, slots: int) -> Dict[str, str]:
        """The previous x0s the state holds: state[0] (x0_prev1) and, with 2 slots, state[1] (x0_prev2)."""
        return {f"x0_prev{k + 1}": self.op("Gather", ["state", self.const(f"slot{k}", np.array(k, np.int64))],
                                           f"x0_prev{k + 1}") for k in range(slots)}

    def combine(self, w: Dict[str, str], terms: Dict[str, str]) -> None:
        """x_next = the sum of w[column] * term over all terms, zero weights included: a model with an unused
        input (z of a deterministic sampler, state of a single-step one) converts for Lite 2.0.0 but does
        not load ("SetMetaGraphInput failed", "compile graph failed")."""
        products = [self.op("Mul", [w[column], tensor], f"w_{column}_term") for column, tensor in terms.items()]
        total = products[0]
        for k, product in enumerate(products[1:], 1):
            total = self.op("Add", [total, product], "x_next" if k == len(products) - 1 else f"sum_{k}")

    def state_next(self, x0: str, history: Dict[str, str]) -> None:
        """[x0, state[0]] for a history of 2, else [x0]."""
        if len(history) < 2:
            self.unsqueeze0(x0, "state_next")
            return
        slots = [self.unsqueeze0(x0, "x0_slot"), self.unsqueeze0(history["x0_prev1"], "x0_prev1_slot")]
        self.op("Concat", slots, "state_next", axis=0)


Signature = Tuple[List[onnx.ValueInfoProto], List[onnx.ValueInfoProto]]


def _signature(x_info: onnx.ValueInfoProto, history: int) -> Signature:
    """Inputs and outputs: images shaped like the U-Net's x, the state with K = max(history, 1) before them."""
    dims = [d.dim_param or d.dim_value for d in x_info.type.tensor_type.shape.dim]
    state = [max(history, 1), *dims]

    def tensor(name: str, shape: list, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, shape)

    inputs = [tensor("x", dims), tensor("i", [1], TensorProto.INT64), tensor("z", dims), tensor("state", state)]
    return inputs, [tensor("x_next", dims), tensor("x0", dims), tensor("state_next", state)]


def _metadata(table: StepTable, sampler: str) -> Dict[str, str]:
    return {METADATA_PREFIX + key: str(value) for key, value in {
        "sampler": sampler, "steps": len(table.timesteps), "noise_steps": table.noise_steps,
        "history": table.history, "state_slots": max(table.history, 1), "clip_x0": table.clip_x0,
        "timesteps": ",".join(str(int(t)) for t in table.timesteps)}.items()}


def _model(unet: onnx.ModelProto, graph: _Builder, unet_initializers: List[TensorProto],
           signature: Signature, metadata: Dict[str, str]) -> onnx.ModelProto:
    inputs, outputs = signature
    body = helper.make_graph(graph.nodes, "sampler_step", inputs, outputs,
                             [*graph.initializers.values(), *unet_initializers])
    model = helper.make_model(body, opset_imports=list(unet.opset_import), ir_version=unet.ir_version,
                              producer_name="ms-ddpm sampler_step", functions=list(unet.functions))
    model.doc_string = (f"One {metadata[METADATA_PREFIX + 'sampler']} step of {metadata[METADATA_PREFIX + 'steps']} "
                        "around the U-Net: (x, i, z, state) -> (x_next, x0, state_next).")
    helper.set_model_props(model, metadata)
    return model


def _spec(info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = info.type.tensor_type
    return TensorSpec(info.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name,
                      [d.dim_param or d.dim_value for d in tensor_type.shape.dim])
