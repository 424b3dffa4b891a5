"""The export's graph optimisation (export/onnx_optimize.py): exact pattern matching on hand-written graphs
in MindSpore's opset-11 spelling, the agreement check that refuses a wrong rewrite, and the export with
and without it behind the numeric gate."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ms_ddpm.export import onnx_optimize
from ms_ddpm.export.onnx_optimize import TARGET_OPSET, optimize_unet
from ms_ddpm.runtime.errors import ToolkitError, VerificationFailed

from conftest import LITE_PLATFORM

C, H, W = 4, 3, 3
RNG = np.random.default_rng(0)
GAMMA = RNG.standard_normal((C,)).astype(np.float32)
BETA = RNG.standard_normal((C,)).astype(np.float32)


def toy_model(*, input_scale: float = 1.0, gelu_cube: float = 0.044715, leak: str = "") -> onnx.ModelProto:
    """x -> x * input_scale -> GroupNorm(1, C) with affine -> tanh-GELU, as MindSpore's exporter writes them
    (Constant shape nodes, Reshape to (B, 1, CHW) and back, Mul(d, d) for the square, Pow(x, 3) in GELU).
    `leak` names an intermediate value that is also made a graph output (so it must not be fused away)."""
    nodes, inits = [], []

    def const(name, value):
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name)))

    def init(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))

    def op(op_type, inputs, output, **attrs):
        nodes.append(helper.make_node(op_type, inputs, [output], **attrs))

    init("scale_in", np.float32(input_scale))
    op("Mul", ["x", "scale_in"], "h")
    const("flat_shape", np.array([-1, 1, C * H * W], np.int64))
    const("back_shape", np.array([-1, C, H, W], np.int64))
    const("affine_shape", np.array([1, -1, 1, 1], np.int64))
    op("Reshape", ["h", "flat_shape"], "flat")
    op("ReduceMean", ["flat"], "mean", axes=[2], keepdims=1)
    op("Sub", ["flat", "mean"], "centred")
    op("Mul", ["centred", "centred"], "square")
    op("ReduceMean", ["square"], "var", axes=[2], keepdims=1)
    init("eps", np.float32(1e-5))
    op("Add", ["var", "eps"], "var_eps")
    op("Sqrt", ["var_eps"], "std")
    op("Div", ["centred", "std"], "normed")
    op("Reshape", ["normed", "back_shape"], "unflat")
    init("gamma", GAMMA)
    init("beta", BETA)
    op("Reshape", ["gamma", "affine_shape"], "gamma4")
    op("Reshape", ["beta", "affine_shape"], "beta4")
    op("Mul", ["unflat", "gamma4"], "scaled")
    op("Add", ["scaled", "beta4"], "g")
    for name, value in (("three", [3.0]), ("cube_k", [gelu_cube]), ("root", [0.7978846]), ("one", [1.0]), ("half", [0.5])):
        init(name, np.array(value, np.float32))
    op("Pow", ["g", "three"], "cube")
    op("Mul", ["cube", "cube_k"], "cubic")
    op("Add", ["g", "cubic"], "inner")
    op("Mul", ["inner", "root"], "scaled_inner")
    op("Tanh", ["scaled_inner"], "th")
    op("Add", ["th", "one"], "th1")
    op("Mul", ["th1", "half"], "halved")
    op("Mul", ["g", "halved"], "y")
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", C, H, W])]
    outputs += [helper.make_tensor_value_info(leak, TensorProto.FLOAT, None)] if leak else []
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", C, H, W])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def reference(x: np.ndarray, input_scale: float = 1.0, gelu_cube: float = 0.044715) -> np.ndarray:
    h = x.astype(np.float64) * input_scale
    mean = h.mean(axis=(1, 2, 3), keepdims=True)
    var = ((h - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
    g = (h - mean) / np.sqrt(var + 1e-5) * GAMMA.reshape(1, C, 1, 1) + BETA.reshape(1, C, 1, 1)
    return 0.5 * g * (1 + np.tanh(0.7978846 * (g + gelu_cube * g ** 3)))


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def test_group_norm_and_gelu_become_one_operator_each():
    x = RNG.standard_normal((5, C, H, W)).astype(np.float32)
    optimized, report = optimize_unet(toy_model())
    assert op_counts(optimized) == {"Mul": 1, "LayerNormalization": 1, "Gelu": 1}
    norm = next(node for node in optimized.graph.node if node.op_type == "LayerNormalization")
    assert helper.get_attribute_value(norm.attribute[0]) == 1  # axis 1 of the 4-D tensor: over (C, H, W)
    assert report.opset == (11, TARGET_OPSET) and report.nodes == (len(toy_model().graph.node), 3)
    assert {name: report.rewrites[name] for name in ("layer_norms", "group_norm_reshapes_removed",
                                                     "norm_affines_absorbed", "gelus")} == dict.fromkeys(
        ("layer_norms", "group_norm_reshapes_removed", "norm_affines_absorbed", "gelus"), 1)
    assert report.agreement["max_abs"] <= 1e-5
    np.testing.assert_allclose(run(optimized, x), reference(x), atol=1e-5)


@pytest.mark.parametrize("variant, unchanged", [
    ({"gelu_cube": 0.04}, "gelus"),  # another constant: not GELU, left alone
    ({"leak": "centred"}, "layer_norms"),  # an intermediate used elsewhere: the chain stays
    ({"leak": "unflat"}, "norm_affines_absorbed"),  # the value before the affine is a graph output too
    ({"leak": "inner"}, "gelus"),
])
def test_a_chain_that_does_not_match_exactly_is_left_alone(variant, unchanged):
    x = RNG.standard_normal((2, C, H, W)).astype(np.float32)
    optimized, report = optimize_unet(toy_model(**variant))
    assert report.rewrites[unchanged] == 0
    assert ("Gelu" in op_counts(optimized)) == (unchanged != "gelus")
    np.testing.assert_allclose(run(optimized, x), reference(x, gelu_cube=variant.get("gelu_cube", 0.044715)), atol=1e-5)


def test_a_wrong_rewrite_is_refused_by_the_agreement_check(monkeypatch):
    """A rewrite that drops the epsilon: on small activations (variance ~1e-6, like the eps of 1e-5) it
    changes the result, and the check inside the pass must refuse the graph."""
    model = toy_model(input_scale=1e-3)
    right = onnx_optimize.layer_norm
    monkeypatch.setattr(onnx_optimize, "layer_norm", lambda x, output, axis, eps, *rest: right(x, output, axis, 0.0, *rest))
    with pytest.raises(VerificationFailed, match="does not compute what the exported one computes"):
        optimize_unet(model)
    # The broken graph does differ: without the check it would have been accepted.
    monkeypatch.setattr(onnx_optimize, "check_agreement", lambda *args: {})
    broken, _ = optimize_unet(model)
    x = RNG.standard_normal((2, C, H, W)).astype(np.float32)
    assert np.max(np.abs(run(broken, x) - run(model, x))) > 1e-2


def test_rewrites_can_be_left_out():
    optimized, report = optimize_unet(toy_model(), skip={"gelus"})
    assert "gelus" not in report.rewrites and op_counts(optimized)["LayerNormalization"] == 1
    assert "Gelu" not in op_counts(optimized) and op_counts(optimized)["Tanh"] == 1
    with pytest.raises(ToolkitError, match="unknown rewrites \\['gelu'\\]"):
        optimize_unet(toy_model(), skip={"gelu"})


def test_chained_identities_are_bypassed():
    model = toy_model()
    graph = model.graph
    first = next(index for index, node in enumerate(graph.node) if node.op_type == "Mul")
    graph.node[first].output[0] = "h0"
    graph.node.insert(first + 1, helper.make_node("Identity", ["h0"], ["h1"]))
    graph.node.insert(first + 2, helper.make_node("Identity", ["h1"], ["h"]))
    optimized, report = optimize_unet(model)
    assert report.rewrites["identities_bypassed"] == 2 and "Identity" not in op_counts(optimized)
    x = RNG.standard_normal((2, C, H, W)).astype(np.float32)
    np.testing.assert_allclose(run(optimized, x), reference(x), atol=1e-5)


def test_a_reshape_of_a_reshape_becomes_one():
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]), helper.make_node("Reshape", ["f", "back"], ["y"])]
    inits = [numpy_helper.from_array(np.array(shape, np.int64), name)
             for name, shape in (("flat", [-1, C * H * W]), ("back", [-1, C * H, W]))]
    graph = helper.make_graph(nodes, "reshapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", C, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", C * H, W])], inits)
    optimized, report = optimize_unet(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]))
    assert report.rewrites["reshapes_merged"] == 1 and [n.input[0] for n in optimized.graph.node] == ["x"]
    x = RNG.standard_normal((2, C, H, W)).astype(np.float32)
    np.testing.assert_array_equal(run(optimized, x), x.reshape(2, C * H, W))


def test_the_pass_is_idempotent_on_its_own_output():
    once, _ = optimize_unet(toy_model())
    twice, report = optimize_unet(once)
    assert op_counts(twice) == op_counts(once) and report.opset == (TARGET_OPSET, TARGET_OPSET)
    assert not any(report.rewrites.values())


# ---- the export ----

def _export(tiny_checkpoint, folder, optimize: bool, **request):
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint
    from ms_ddpm.runtime.manifest import Manifest, manifest_path_for

    out = export_checkpoint(tiny_checkpoint, ExportRequest(format="onnx", out=folder / f"unet-{optimize}.onnx",
                                                           optimize=optimize, **request), log=lambda _: None)
    return onnx.load(str(out)), Manifest.load(manifest_path_for(out))


def test_optimised_export_passes_the_gate_and_records_the_pass(tiny_checkpoint, tmp_path):
    model, manifest = _export(tiny_checkpoint, tmp_path, optimize=True)
    assert manifest.verification["passed"] and manifest.verification["worst_max_abs"] <= 1e-4
    assert manifest.opset == TARGET_OPSET
    recorded = manifest.extra["optimize"]
    assert recorded["opset"] == [11, TARGET_OPSET] and recorded["nodes"][1] == len(model.graph.node) < recorded["nodes"][0]
    counts = op_counts(model)
    assert counts["LayerNormalization"] == recorded["rewrites"]["layer_norms"] > 0
    assert counts["Gelu"] == recorded["rewrites"]["gelus"] > 0
    assert "Pow" not in counts and "Identity" not in counts and "Constant" not in counts


@pytest.mark.skipif(not LITE_PLATFORM, reason="MindSpore Lite's only wheel is x86_64 Linux")
@pytest.mark.parametrize("batch", [None, 2])
def test_lite_converts_the_optimised_graph_without_the_gelu_rewrite(tiny_checkpoint, tmp_path, batch):
    """Dynamic batch: the optimised graph, without GELU; fixed batch: the plain graph (Lite 2.0.0 gets a
    static-shape LayerNormalization wrong)."""
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint
    from ms_ddpm.runtime.manifest import Manifest, manifest_path_for

    out = export_checkpoint(tiny_checkpoint, ExportRequest(format="mslite", out=tmp_path / "unet.lite.mindir", batch=batch),
                            log=lambda _: None)
    manifest = Manifest.load(manifest_path_for(out))
    assert manifest.verification["passed"]
    if batch is None:
        assert manifest.opset == TARGET_OPSET and "gelus" not in manifest.extra["optimize"]["rewrites"]
        assert manifest.extra["optimize"]["rewrites"]["layer_norms"] > 0
    else:
        assert manifest.opset == 11 and manifest.extra["optimize"] is False


def test_no_optimize_keeps_the_exporters_graph(tiny_checkpoint, tmp_path):
    model, manifest = _export(tiny_checkpoint, tmp_path, optimize=False)
    assert manifest.verification["passed"] and manifest.extra["optimize"] is False
    assert manifest.opset == 11 and "LayerNormalization" not in op_counts(model) and op_counts(model)["Pow"] > 0


def test_a_lower_opset_needs_no_optimize(tiny_checkpoint, tmp_path):
    with pytest.raises(ToolkitError, match=f"below the optimised graph's opset {TARGET_OPSET}.*--no-optimize"):
        _export(tiny_checkpoint, tmp_path, optimize=True, opset=13)
    assert not list(tmp_path.iterdir())


def test_no_optimize_is_refused_for_mindir(tiny_checkpoint, tmp_path):
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint

    with pytest.raises(ToolkitError, match="--no-optimize applies to the formats built on the ONNX graph, not mindir"):
        export_checkpoint(tiny_checkpoint, ExportRequest(format="mindir", out=tmp_path / "unet.mindir", optimize=False),
                          log=lambda _: None)
