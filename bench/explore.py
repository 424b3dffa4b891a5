"""What moves onnxruntime toward the machine's peak: session options, threads, layout, a saved
optimised model, the time-MLP folded into lookup tables, and int8 quantisation.

Each variant is (label, ONNX file, session options); bench/run.py times them side by side in
workers (`ort_options` in the worker spec) and checks each against the plain fp32 model with the
export gate's measures (max abs error, cosine similarity). No MindSpore here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

OPT_LEVELS = ("disable", "basic", "extended", "all")
T_INPUT, X_INPUT = "t", "x"


def _ort():
    import onnxruntime as ort

    return ort


def session_options(options: Dict[str, Any]):
    """onnxruntime SessionOptions from a plain dict (JSON-able, so a worker can receive it)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    level = options.get("opt_level", "all")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if options.get("threads"):
        so.intra_op_num_threads = int(options["threads"])
    if options.get("inter_threads"):
        so.inter_op_num_threads = int(options["inter_threads"])
    if "spinning" in options:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options["spinning"] else "0")
    if options.get("save_optimized"):
        so.optimized_model_filepath = str(options["save_optimized"])
    for key, value in options.get("config", {}).items():
        so.add_session_config_entry(key, str(value))
    return so


def open_session(path: str, options: Dict[str, Any]) -> Tuple[Callable, Tuple[int, ...], int]:
    """(eps(x, t), image shape (C, H, W), T) for an ONNX U-Net under the given options.

    T comes from the manifest beside the original export, named in options["manifest"] (derived
    models have none of their own)."""
    ort = _ort()
    session = ort.InferenceSession(str(path), session_options(options), providers=["CPUExecutionProvider"])
    inputs = {arg.name: arg for arg in session.get_inputs()}
    shape = tuple(inputs[X_INPUT].shape[1:])
    manifest = json.loads(Path(options["manifest"]).read_text())
    timesteps = len(manifest["betas"])
    return (lambda x, t: session.run(None, {X_INPUT: x, T_INPUT: t})[0]), shape, timesteps


def matmul_session(size: int):
    """An onnxruntime session computing one (size x size) @ (size x size) float32 MatMul."""
    from onnx import TensorProto, helper

    ort = _ort()
    spec = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size])  # noqa: E731
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", [spec("a"), spec("b")], [spec("c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
