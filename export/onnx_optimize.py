"""Graph optimisation of an exported U-Net ONNX for onnxruntime's CPU kernels.

MindSpore's exporter writes opset 11 with every normalisation and GELU spelled out in element-wise ops,
which onnxruntime runs one memory-bound kernel at a time. `optimize_unet` rewrites a copy:

- the opset, raised to `TARGET_OPSET` (onnx.version_converter);
- constants: Constant nodes become initializers, nodes whose inputs are all constant are evaluated
  (onnx.reference) into initializers, Identity nodes are bypassed, Reshape-of-Reshape merged;
- each normalisation `(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)` over trailing axes ->
  `LayerNormalization`; a group norm's flattening reshapes around it (B, C, H, W) -> (B, 1, CHW) -> back
  -> one `LayerNormalization` over (C, H, W) of the 4-D tensor; a following per-channel Mul (and Add)
  -> its scale (and bias);
- each tanh-GELU chain `x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))` -> `Gelu(approximate="tanh")`.

Measured and left out (docs/benchmarks.md): the channel norm (mean over axis 1, the tutorial's LayerNorm)
as Transpose + LayerNormalization + Transpose (no faster on onnxruntime; MindSpore Lite 2.0.0 runs it with
2.5e-3 error), and Transpose + Softmax + Transpose as one Softmax on another axis (no faster).

Matching is exact: the structure, the constants (to float32 rounding), and that no intermediate value is
used anywhere else; anything else is left alone. Every rewrite is counted. Before the optimised graph is
returned, both graphs run on onnxruntime on random inputs and must agree within the export gate's thresholds.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..runtime.errors import ToolkitError, VerificationFailed, first_line

from .gate import Thresholds, compare

TARGET_OPSET = 20  # Gelu (tanh approximation) is an operator from opset 20 on
CHECK_BATCHES = (1, 5)  # batch sizes of the agreement check, for a symbolic batch axis
CHECK_SEED = 0
TIMESTEP_HIGH = 1000  # integer inputs of the agreement check are drawn from [0, TIMESTEP_HIGH)
GELU_CUBE, GELU_SCALE = 0.044715, math.sqrt(2 / math.pi)
PREFIX = "opt/"  # names of the values and nodes the pass creates


@dataclass
class OptimizeReport:
    """What the pass did: opsets and node counts before -> after, rewrites by kind, the agreement check."""

    opset: Tuple[int, int]
    nodes: Tuple[int, int]
    rewrites: Dict[str, int]
    agreement: Dict[str, float] = field(default_factory=dict)  # worst max abs and cosine, optimised vs plain

    def to_dict(self) -> Dict[str, Any]:
        return {"opset": list(self.opset), "nodes": list(self.nodes), "rewrites": dict(self.rewrites),
                "agreement": dict(self.agreement)}


def optimize_unet(model: onnx.ModelProto, thresholds: Thresholds = Thresholds(),
                  skip: Collection[str] = ()) -> Tuple[onnx.ModelProto, OptimizeReport]:
    """An optimised copy of `model` (any U-Net-like graph) and a report; VerificationFailed when the
    optimised graph does not compute what `model` computes on onnxruntime. `skip` names rewrites of
    REWRITES to leave out."""
    unknown = set(skip) - {name for name, _ in REWRITES}
    if unknown:
        raise ToolkitError(f"unknown rewrites {sorted(unknown)}; the pass has {', '.join(name for name, _ in REWRITES)}")
    optimized = convert_opset(model, max(default_opset(model), TARGET_OPSET))
    rewrites = {name: rewrite(optimized) for name, rewrite in REWRITES if name not in skip}
    _drop_unused(optimized.graph)
    try:
        onnx.checker.check_model(optimized, full_check=True)
    except Exception as exc:  # ValidationError or InferenceError, from onnx's C++ checker
        raise VerificationFailed(f"the optimised ONNX fails onnx.checker: {first_line(exc)}") from exc
    report = OptimizeReport(opset=(default_opset(model), default_opset(optimized)),
                            nodes=(len(model.graph.node), len(optimized.graph.node)),
                            rewrites=rewrites)
    report.agreement = check_agreement(model, optimized, thresholds)
    return optimized, report


def convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """A copy at `opset` (onnx.version_converter), with the IR version the new opset needs."""
    try:
        converted = onnx.version_converter.convert_version(model, opset)
    except RuntimeError as exc:
        raise ToolkitError(f"cannot convert the ONNX graph to opset {opset}: {first_line(exc, 160)}") from exc
    converted.ir_version = max(converted.ir_version, helper.find_min_ir_version_for(converted.opset_import))
    return converted


def default_opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


# ---- the agreement check ----

def check_agreement(plain: onnx.ModelProto, optimized: onnx.ModelProto, thresholds: Thresholds) -> Dict[str, float]:
    """Run both graphs on onnxruntime on the same random inputs; the worst max abs and cosine, or
    VerificationFailed when a case misses `thresholds`."""
    plain_run, optimized_run = _session(plain, "exported"), _session(optimized, "optimised")
    worst = {"max_abs": 0.0, "cosine": 1.0}
    for feed in check_inputs(plain.graph):
        for reference, candidate in zip(plain_run(feed), optimized_run(feed)):
            result = compare(reference, candidate)
            if not thresholds.passes(result):
                raise VerificationFailed(f"the optimised ONNX graph does not compute what the exported one computes "
                                         f"({_describe(result)}; needs max abs <= {thresholds.atol:g}, cosine >= "
                                         f"{thresholds.min_cosine:g}); export with --no-optimize")
            worst = {"max_abs": max(worst["max_abs"], result["max_abs"]), "cosine": min(worst["cosine"], result["cosine"])}
    return worst


def check_inputs(graph: onnx.GraphProto) -> List[Dict[str, np.ndarray]]:
    """Random feeds for every graph input: floats ~ N(0, 1), integers in [0, TIMESTEP_HIGH); a symbolic
    batch axis takes each of CHECK_BATCHES."""
    rng = np.random.default_rng(CHECK_SEED)
    fixed = {dim.dim_value for value in graph.input for dim in value.type.tensor_type.shape.dim[:1] if dim.dim_value}
    return [{value.name: _random_input(rng, value, batch) for value in graph.input} for batch in (fixed or CHECK_BATCHES)]


def _random_input(rng: np.random.Generator, value: onnx.ValueInfoProto, batch: int) -> np.ndarray:
    tensor = value.type.tensor_type
    shape = [dim.dim_value or batch for dim in tensor.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, TIMESTEP_HIGH, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _session(model: onnx.ModelProto, label: str) -> Callable[[Dict[str, np.ndarray]], List[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise VerificationFailed(f"onnxruntime cannot load the {label} ONNX graph: {first_line(exc)}") from exc
    return lambda feed: session.run(None, feed)


def _describe(result: Dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    return f"max abs {result['max_abs']:.2e}, cosine {result['cosine']:.8f}"


# ---- the graph, indexed ----

class _Index:
    """One state of a graph: who makes and who uses each value, the constants, and (on demand) the shapes."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.producer = {name: node for node in graph.node for name in node.output}
        self.users: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in dict.fromkeys(node.input):
                self.users[name].append(node)
        self.outputs = {value.name for value in graph.output}
        self.constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
        self._shapes: Optional[Dict[str, List[Any]]] = None

    def node(self, name: str, *op_types: str) -> Optional[onnx.NodeProto]:
        """The node making `name`, if it is one of `op_types` in the default domain."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type in op_types and node.domain in ("", "ai.onnx") else None

    def private(self, name: str, *users: onnx.NodeProto) -> bool:
        """`name` is used by exactly `users` and is not a graph output."""
        return name not in self.outputs and {id(n) for n in self.users[name]} == {id(n) for n in users}

    def scalar(self, name: str) -> Optional[float]:
        value = self.constants.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def with_scalar(self, name: str, op_type: str, expected: Optional[float] = None) -> Optional[Tuple[onnx.NodeProto, str, float]]:
        """The node making `name` if it is a binary `op_type` with one scalar constant operand (equal to
        `expected` to float32 rounding, when given): (node, other operand, constant)."""
        node = self.node(name, op_type)
        if node is None or len(node.input) != 2:
            return None
        for other, const in (node.input, node.input[::-1]):
            value = self.scalar(const)
            if value is not None and other not in self.constants and (expected is None or _close(value, expected)):
                return node, other, value
        return None

    def axes(self, node: onnx.NodeProto) -> Optional[List[int]]:
        """A ReduceMean's axes, from its attribute (opset < 18) or its constant second input."""
        if len(node.input) > 1:
            value = self.constants.get(node.input[1])
            return None if value is None else [int(a) for a in value.reshape(-1)]
        return _attribute(node, "axes")

    def shape(self, name: str) -> Optional[List[Any]]:
        """Inferred dims of `name` (int, str for symbolic, None for unknown), or None if not inferred."""
        if self._shapes is None:
            inferred = onnx.shape_inference.infer_shapes(self.model).graph
            self._shapes = {value.name: [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
                                         for dim in value.type.tensor_type.shape.dim]
                            for value in [*inferred.input, *inferred.value_info, *inferred.output]
                            if value.type.tensor_type.HasField("shape")}
        return self._shapes.get(name)


@dataclass
class _Rewrite:
    """Replace the nodes `old` (a chain ending in old[-1]) with `new`, which need `initializers`."""

    old: List[onnx.NodeProto]  # removed; the new nodes go where the last of them was
    new: List[onnx.NodeProto]
    initializers: List[onnx.TensorProto] = field(default_factory=list)
    renames: Dict[str, str] = field(default_factory=dict)  # value -> the value its users read instead


Matcher = Callable[[_Index, onnx.NodeProto], Optional[_Rewrite]]


def _rewrite_all(matcher: Matcher) -> Callable[[onnx.ModelProto], int]:
    """A pass: apply `matcher` at every node (no node in two rewrites); returns how many it rewrote."""

    def run(model: onnx.ModelProto) -> int:
        index, claimed, rewrites = _Index(model), set(), []
        for node in list(model.graph.node):
            rewrite = None if id(node) in claimed else matcher(index, node)
            if rewrite is not None and not claimed & {id(n) for n in rewrite.old}:
                claimed |= {id(n) for n in rewrite.old}
                rewrites.append(rewrite)
        _apply(model.graph, rewrites)
        return len(rewrites)

    return run


def _apply(graph: onnx.GraphProto, rewrites: Sequence[_Rewrite]) -> None:
    removed = {id(node) for rewrite in rewrites for node in rewrite.old}
    inserted = {id(rewrite.old[-1]): rewrite.new for rewrite in rewrites}  # old[-1]: the chain's last node
    nodes = []
    for node in graph.node:
        nodes += inserted.get(id(node), [])
        if id(node) not in removed:
            nodes.append(node)
    renames = {old: new for rewrite in rewrites for old, new in rewrite.renames.items()}
    for node in nodes:
        node.input[:] = [_renamed(name, renames) for name in node.input]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(tensor for rewrite in rewrites for tensor in rewrite.initializers)


def _renamed(name: str, renames: Dict[str, str]) -> str:
    """`name` after `renames`, followed through chains (Identity of an Identity)."""
    while name in renames:
        name = renames[name]
    return name


# ---- constants ----

def fold_constants(model: onnx.ModelProto) -> int:
    """Constant nodes -> initializers; nodes with only constant inputs -> their values. Returns nodes removed."""
    from onnx.reference import ReferenceEvaluator

    graph, kept, folded = model.graph, [], 0
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if _foldable(node, constants):
            outputs = ReferenceEvaluator(node).run(None, {name: constants[name] for name in node.input if name})
            for name, value in zip(node.output, outputs):
                constants[name] = np.asarray(value)
                graph.initializer.append(numpy_helper.from_array(constants[name], name))
            folded += 1
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return folded


def _foldable(node: onnx.NodeProto, constants: Dict[str, np.ndarray]) -> bool:
    deterministic = node.domain in ("", "ai.onnx") and not node.op_type.startswith("Random") \
        and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
    return deterministic and all(name in constants for name in node.input if name)


def _bypass(index: _Index, node: onnx.NodeProto) -> Optional[_Rewrite]:
    """Identity(x) -> y: y's users read x (y not a graph output)."""
    if node.op_type != "Identity" or node.output[0] in index.outputs:
        return None
    return _Rewrite(old=[node], new=[], renames={node.output[0]: node.input[0]})


def _merge_reshapes(index: _Index, node: onnx.NodeProto) -> Optional[_Rewrite]:
    """Reshape(Reshape(x, s1), s2) -> Reshape(x, s2), when s2 is a constant that copies no dim (no 0)."""
    inner = index.node(node.input[0], "Reshape") if node.op_type == "Reshape" else None
    target = index.constants.get(node.input[1]) if inner is not None else None
    if target is None or 0 in target or _attribute(node, "allowzero") or not index.private(inner.output[0], node):
        return None
    return _Rewrite(old=[inner, node], new=[_node("Reshape", [inner.input[0], node.input[1]], node.output)])


# ---- normalisations ----

def _match_norm(index: _Index, div: onnx.NodeProto) -> Optional[Tuple[str, List[int], float, List[onnx.NodeProto]]]:
    """(x, axes, eps, chain) of `div` = (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps), chain ending at `div`."""
    if div.op_type != "Div" or div.domain not in ("", "ai.onnx"):
        return None
    centred, root = div.input
    sqrt = index.node(root, "Sqrt")
    plus_eps = sqrt and index.with_scalar(sqrt.input[0], "Add")
    variance = plus_eps and index.node(plus_eps[1], "ReduceMean")
    square = variance and index.node(variance.input[0], "Mul", "Pow")
    sub = index.node(centred, "Sub")
    mean = sub and index.node(sub.input[1], "ReduceMean")
    if not (square and mean and mean.input[0] == sub.input[0] and _is_square_of(index, square, centred)
            and plus_eps[2] > 0 and _is_keepdims_mean(index, mean) and _is_keepdims_mean(index, variance)
            and index.axes(mean) == index.axes(variance)):
        return None
    chain = [mean, sub, square, variance, plus_eps[0], sqrt, div]
    if not all(index.private(node.output[0], user) for node, user in zip(chain, chain[1:]) if node is not sub) \
            or not index.private(centred, square, div):
        return None
    return sub.input[0], index.axes(mean), plus_eps[2], chain


def _is_square_of(index: _Index, node: onnx.NodeProto, name: str) -> bool:
    if node.op_type == "Mul":
        return list(node.input) == [name, name]
    return node.input[0] == name and index.scalar(node.input[1]) == 2.0


def _is_keepdims_mean(index: _Index, node: onnx.NodeProto) -> bool:
    return _attribute(node, "keepdims") in (None, 1) and bool(index.axes(node)) \
        and not _attribute(node, "noop_with_empty_axes")


def _layer_norm(index: _Index, div: onnx.NodeProto) -> Optional[_Rewrite]:
    """A normalisation over the trailing axes (of static sizes) -> LayerNormalization (scale 1, bias 0)."""
    match = _match_norm(index, div)
    shape = match and index.shape(match[0])
    if not match or not shape:
        return None
    x, axes, eps, chain = match
    axes = sorted(a % len(shape) for a in axes)
    if axes != list(range(axes[0], len(shape))) or not _static(shape[axes[0]:]):
        return None
    return _Rewrite(chain, *layer_norm(x, div.output[0], axes[0], eps, np.ones(shape[axes[0]:], np.float32)))


def layer_norm(x: str, output: str, axis: int, eps: float, scale: np.ndarray,
               bias: Optional[np.ndarray] = None) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]:
    """The LayerNormalization every rewrite makes, and its scale and bias (zeros when None) as initializers.

    Both have the full normalised shape, even when constant along some axes: onnxruntime 1.32 takes 10-20x
    longer with a broadcast scale (measured on (64, 56, 28, 28), axis 1). And the bias is always there:
    MindSpore Lite 2.0.0 converts a LayerNormalization without one but then cannot compile the model."""
    tensors = [_tensor(scale, f"{output}/scale"), _tensor(np.zeros_like(scale) if bias is None else bias, f"{output}/bias")]
    node = _node("LayerNormalization", [x, *(tensor.name for tensor in tensors)], [output], axis=axis, epsilon=eps)
    return [node], tensors


def _unflatten_norm(index: _Index, back: onnx.NodeProto) -> Optional[_Rewrite]:
    """Reshape(x, [-1, 1, N]) -> LayerNormalization(last axis, uniform scale and bias) -> Reshape(back to x's
    shape) -> LayerNormalization over axes 1.. of x (N = the product of x's dims after the first)."""
    norm = index.node(back.input[0], "LayerNormalization") if back.op_type == "Reshape" else None
    parts = norm and _affine_norm(index, norm)
    flat = parts and index.node(norm.input[0], "Reshape")
    dims = flat and index.shape(flat.input[0])
    if not dims or not _static(dims[1:]) or parts[0] != len(index.shape(norm.input[0])) - 1 \
            or not all(np.all(values == values.flat[0]) for values in parts[1:]):
        return None
    flat_shape, back_shape = (index.constants.get(node.input[1]) for node in (flat, back))
    if flat_shape is None or back_shape is None \
            or list(flat_shape) != [-1, *[1] * (len(flat_shape) - 2), math.prod(dims[1:])] \
            or list(back_shape) != [-1, *dims[1:]] \
            or not index.private(flat.output[0], norm) or not index.private(norm.output[0], back):
        return None
    scale, bias = (np.full(dims[1:], values.flat[0], np.float32) for values in parts[1:])
    return _Rewrite([flat, norm, back], *layer_norm(flat.input[0], back.output[0], 1, _attribute(norm, "epsilon"),
                                                    scale, bias))


def _norm_affine(index: _Index, norm: onnx.NodeProto) -> Optional[_Rewrite]:
    """LayerNormalization -> Mul(constant) [-> Add(constant)] -> LayerNormalization with that scale [and bias],
    when the constants vary only along the normalised axes (and match their sizes)."""
    parts = norm.op_type == "LayerNormalization" and _affine_norm(index, norm)
    mul = parts and _constant_operand(index, norm.output[0], "Mul", parts[1].shape)
    if not mul:
        return None
    add = _constant_operand(index, mul[0].output[0], "Add", parts[1].shape)
    old = [norm, mul[0], *([add[0]] if add else [])]
    axis, scale, bias = parts
    return _Rewrite(old, *layer_norm(norm.input[0], old[-1].output[0], axis, _attribute(norm, "epsilon"),
                                     scale * mul[1], bias * mul[1] + (add[1] if add else 0)))


def _affine_norm(index: _Index, norm: onnx.NodeProto) -> Optional[Tuple[int, np.ndarray, np.ndarray]]:
    """(axis, scale, bias), both of the normalised shape, of a LayerNormalization with constant scale and
    bias (or none) over axes of static sizes."""
    dims = index.shape(norm.input[0])
    values = [index.constants.get(name) for name in norm.input[1:]]
    if not dims or any(value is None for value in values) or norm.domain not in ("", "ai.onnx"):
        return None
    axis = (_attribute(norm, "axis") if _attribute(norm, "axis") is not None else -1) % len(dims)
    if not _static(dims[axis:]) or not all(_broadcasts(value.shape, dims[axis:]) for value in values):
        return None
    scale, bias = (np.broadcast_to(value, dims[axis:]).astype(np.float32) for value in [*values, np.zeros(1)][:2])
    return axis, scale, bias


def _constant_operand(index: _Index, name: str, op_type: str, shape: Tuple[int, ...]) -> Optional[Tuple[onnx.NodeProto, np.ndarray]]:
    """The only user of `name`, if it is `op_type` with a float32 constant operand that broadcasts to
    `shape` (the trailing dims of `name`) without widening it: (node, the constant in `shape`)."""
    users = index.users[name]
    node = users[0] if len(users) == 1 and name not in index.outputs else None
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    value = index.constants.get(node.input[1] if node.input[0] == name else node.input[0])
    if value is None or value.dtype != np.float32 or name not in node.input[:2] or node.input[0] == node.input[1]:
        return None
    squeezed = value.reshape(value.shape[next((i for i, d in enumerate(value.shape) if d != 1), value.ndim):])
    if squeezed.ndim > len(shape) or not _broadcasts(squeezed.shape, shape):
        return None
    return node, np.broadcast_to(squeezed, shape)


# ---- GELU ----

def _gelu(index: _Index, node: onnx.NodeProto) -> Optional[_Rewrite]:
    """x * (0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))) -> Gelu(x, approximate="tanh")."""
    if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    for x, half in (node.input, node.input[::-1]):
        chain = _gelu_chain(index, x, half)
        if chain and all(index.private(link.output[0], user) for link, user in zip(chain, [*chain[1:], node])):
            return _Rewrite(old=[*chain, node], new=[_node("Gelu", [x], node.output, approximate="tanh")])
    return None


def _gelu_chain(index: _Index, x: str, name: str) -> Optional[List[onnx.NodeProto]]:
    """The nodes from x^3 to the 0.5 factor making `name`, in order, if they are GELU's with input `x`."""
    half = index.with_scalar(name, "Mul", 0.5)
    plus_one = half and index.with_scalar(half[1], "Add", 1.0)
    tanh = plus_one and index.node(plus_one[1], "Tanh")
    scaled = tanh and index.with_scalar(tanh.input[0], "Mul", GELU_SCALE)
    inner = scaled and index.node(scaled[1], "Add")
    if not inner or x not in inner.input or len(inner.input) != 2:
        return None
    cubic = index.with_scalar(inner.input[1] if inner.input[0] == x else inner.input[0], "Mul", GELU_CUBE)
    cube = cubic and index.node(cubic[1], "Pow")
    if not cube or cube.input[0] != x or index.scalar(cube.input[1]) != 3.0:
        return None
    return [cube, cubic[0], inner, scaled[0], tanh, plus_one[0], half[0]]


# ---- small helpers ----

def _static(dims: Sequence[Any]) -> bool:
    return all(isinstance(dim, int) and dim > 0 for dim in dims)


def _broadcasts(shape: Sequence[int], onto: Sequence[int]) -> bool:
    """A tensor of `shape` broadcasts to `onto` without changing it."""
    return len(shape) <= len(onto) and all(a in (1, b) for a, b in zip(shape[::-1], onto[::-1]))


def _tensor(value: np.ndarray, name: str) -> onnx.TensorProto:
    """An initializer the pass creates (its name prefixed)."""
    return numpy_helper.from_array(np.ascontiguousarray(value, np.float32), f"{PREFIX}{name}")


def _close(value: float, expected: float) -> bool:
    """Equal to float32 rounding."""
    return bool(np.float32(value) == np.float32(expected))


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else None


def _node(op_type: str, inputs: Iterable[str], outputs: Sequence[str], **attributes: Any) -> onnx.NodeProto:
    """A node the pass creates, named after its first output."""
    return helper.make_node(op_type, list(inputs), list(outputs), name=f"{PREFIX}{outputs[0]}", **attributes)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers no node reads (folded or absorbed ones)."""
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    keep = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


REWRITES: Tuple[Tuple[str, Callable[[onnx.ModelProto], int]], ...] = (
    ("constants_folded", fold_constants),
    ("identities_bypassed", _rewrite_all(_bypass)),
    ("reshapes_merged", _rewrite_all(_merge_reshapes)),
    ("layer_norms", _rewrite_all(_layer_norm)),
    ("group_norm_reshapes_removed", _rewrite_all(_unflatten_norm)),
    ("norm_affines_absorbed", _rewrite_all(_norm_affine)),
    ("gelus", _rewrite_all(_gelu)),
)
