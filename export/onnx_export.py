"""ONNX: `mindspore.onnx.export`, repaired with the `onnx` package, `check_model(full_check=True)`, and
loaded back with onnxruntime. Only `export` touches MindSpore; repairing and loading never do.

Repairs of MindSpore 2.10's exporter output:
- ConvTranspose carries a 4-value `output_shape` that onnxruntime rejects: it is dropped (the explicit
  pads give the output size), and the sizes shape inference then gives are checked against it;
- the output has a numeric name and the traced batch baked into its shape: it is renamed `eps` and,
  in a dynamic export, its batch axis made symbolic. (`output_names` is not passed to the exporter:
  the graph it makes is rejected by the MindSpore Lite converter.)
- the exporter writes opset 11; another `opset` goes through `onnx.version_converter`.

Then, if `optimize` (the CLI default), `onnx_optimize.optimize_unet` rewrites the graph for onnxruntime (opset 20,
fused normalisations and GELUs) and proves on onnxruntime that it still computes what the repaired graph does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Dict, List, Optional

import onnx
import onnxruntime as ort

from ..runtime.config import ModelConfig
from ..runtime.errors import ToolkitError, VerificationFailed, first_line
from ..runtime.onnx_external import check_external_data

from .formats import BATCH_AXIS, INPUT_NAMES, OUTPUT_NAME, Exported
from .gate import EpsFn
from .onnx_optimize import TARGET_OPSET, convert_opset, default_opset, optimize_unet

SUFFIX = ".onnx"
OPTIMIZES = True  # export() takes `optimize` (export.pipeline passes it)
LOADER = f"onnxruntime {ort.__version__} CPU"
TRACE_BATCH = 2  # a dynamic export is traced at batch 2, so that no size-1 batch axis gets folded away


def export(net, model: ModelConfig, path: Path, batch: Optional[int], opset: Optional[int],
           optimize: bool = False, skip: Collection[str] = ()) -> Exported:
    """Export `net` (a MindSpore cell) to `path`, repaired, converted to `opset` if given, fully checked, and
    optimised if `optimize` (without the rewrites named in `skip`; export.pipeline passes ExportRequest.optimize,
    on by default). Every GroupNorm in `net` is switched to its exportable spelling first (MindSpore's ONNX
    exporter has no GroupNorm)."""
    import mindspore as ms  # the export step only

    from ..train.model import use_exportable_norms
    from .source import example_inputs

    check_opset(opset, optimize)
    use_exportable_norms(net)
    dynamic = batch is None
    ms.onnx.export(net, *example_inputs(model, TRACE_BATCH if dynamic else batch), file_name=str(path),
                   input_names=list(INPUT_NAMES),
                   dynamic_axes={name: {0: BATCH_AXIS} for name in INPUT_NAMES} if dynamic else None)
    graph = repair(onnx.load(str(path)), dynamic)
    if opset is not None:
        graph = convert_opset(graph, opset)
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as exc:  # ValidationError or InferenceError, from onnx's C++ checker
        raise VerificationFailed(f"the exported ONNX fails onnx.checker (full check): {first_line(exc)}") from exc
    notes: Dict[str, Any] = {"exporter": f"mindspore {ms.__version__} onnx.export, repaired", "optimize": False}
    if optimize:
        graph, report = optimize_unet(graph, skip=skip)
        notes["optimize"] = report.to_dict()
    onnx.save(graph, str(path))
    return Exported(opset=default_opset(graph), notes=notes)


def check_opset(opset: Optional[int], optimize: bool) -> None:
    """The optimised graph needs opset TARGET_OPSET or later: a lower `opset` needs `optimize` off."""
    if optimize and opset is not None and opset < TARGET_OPSET:
        raise ToolkitError(f"--opset {opset} is below the optimised graph's opset {TARGET_OPSET}; "
                           f"add --no-optimize to export the plain graph at opset {opset}")


def repair(model: onnx.ModelProto, dynamic: bool) -> onnx.ModelProto:
    """Fix MindSpore's ONNX in place (see the module docstring); returns `model`."""
    stated = _drop_conv_transpose_output_shape(model.graph)
    _rename_output(model.graph, OUTPUT_NAME)
    if dynamic:
        model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS
    _check_spatial_sizes(model, stated)
    return model


def _drop_conv_transpose_output_shape(graph: onnx.GraphProto) -> Dict[str, List[int]]:
    """Remove ConvTranspose's `output_shape`; return what it stated, per node output."""
    stated = {}
    for node in graph.node:
        if node.op_type != "ConvTranspose":
            continue
        for attribute in [a for a in node.attribute if a.name == "output_shape"]:
            stated[node.output[0]] = list(attribute.ints)
            node.attribute.remove(attribute)
    return stated


def _check_spatial_sizes(model: onnx.ModelProto, stated: Dict[str, List[int]]) -> None:
    """The sizes implied by the pads must be the ones the dropped `output_shape` stated."""
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
            for info in [*inferred.graph.value_info, *inferred.graph.output]}
    for name, shape in stated.items():
        if dims.get(name, [])[2:] != shape[-2:]:
            raise ToolkitError(f"ConvTranspose {name}: output size {dims.get(name)} differs from the exporter's "
                               f"output_shape {shape}; this model cannot be exported to ONNX")


def _rename_output(graph: onnx.GraphProto, new_name: str) -> None:
    old_name = graph.output[0].name
    for node in graph.node:
        for names in (node.input, node.output):
            for index, name in enumerate(names):
                if name == old_name:
                    names[index] = new_name
    graph.output[0].name = new_name


def load_eps(path: Path) -> EpsFn:
    """An onnxruntime session on the artifact, as `eps(x, t)`; no MindSpore involved."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    check_external_data(path)
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...) derive from Exception
        raise ToolkitError(f"corrupt or unreadable ONNX artifact: {path} ({first_line(exc, 160)})") from exc
    return lambda x, t: session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, (x, t))))[0]
