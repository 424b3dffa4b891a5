"""onnxruntime variants of the exported U-Net, timed side by side and gated against the fp32 model.

Model transformations (each writes a new ONNX file; the original export is never touched):
- `fold_time_mlp`: every node that depends on `t` only (sinusoidal embedding, time MLP, each block's
  time projection) is evaluated once for t = 0 .. T-1 and replaced by a table and a `Gather` on t.
  Exact up to float rounding; saves the time-MLP's work and its small, latency-bound kernels per call.
- `save_optimized`: onnxruntime's own ORT_ENABLE_ALL result (NCHWc layout, fusions) saved to a file,
  loaded later with optimisations off: the same kernels, less session-creation time.
- `quantize_int8_dynamic` / `quantize_int8_static`: onnxruntime.quantization's dynamic (ConvInteger /
  MatMulInteger) and static QDQ (per-channel weights, calibrated activations) int8 models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .explore import T_INPUT, X_INPUT, open_session, session_options

GATE_BATCH = 16


# ---- transformations ------------------------------------------------------------------------------------
def _t_only_nodes(graph) -> Tuple[List[Any], List[str]]:
    """The nodes computed from t (and constants) alone, and their outputs that the rest of the graph reads."""
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    derived, nodes = {T_INPUT}, []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type != "Constant" and inputs and any(i in derived for i in inputs) \
                and all(i in derived or i in constants for i in inputs):
            nodes.append(node)
            derived.update(node.output)
    produced = {out for node in nodes for out in node.output}
    t_node_ids = {id(node) for node in nodes}
    read_elsewhere = {i for node in graph.node if id(node) not in t_node_ids for i in node.input}
    read_elsewhere |= {out.name for out in graph.output}
    frontier = sorted(produced & read_elsewhere)
    return nodes, frontier


def fold_time_mlp(source: Path, out: Path, timesteps: int) -> Dict[str, Any]:
    """Write `out`: `source` with its t-only subgraph replaced by Gather(table, t). Returns a summary."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    if any(i.name == T_INPUT for i in graph.output) or T_INPUT not in {i.name for i in graph.input}:
        raise ValueError("the model has no t input to fold")
    nodes, frontier = _t_only_nodes(graph)
    if not frontier:
        raise ValueError("no t-only subgraph found")
    # evaluate the frontier tensors for every timestep, with the t-only part as its own model
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in frontier)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x_shape = [d.dim_value for d in next(i for i in graph.input if i.name == X_INPUT).type.tensor_type.shape.dim]
    t_type = next(i for i in graph.input if i.name == T_INPUT).type.tensor_type.elem_type
    t_all = np.arange(timesteps, dtype=helper.tensor_dtype_to_np_dtype(t_type))
    values = session.run(frontier, {X_INPUT: np.zeros((timesteps, *x_shape[1:]), np.float32), T_INPUT: t_all})
    for name, value in zip(frontier, values):
        if value.ndim == 0 or value.shape[0] != timesteps:
            raise ValueError(f"t-only tensor {name} of shape {value.shape} is not per-sample; cannot fold")
    removed = {id(node) for node in nodes}
    kept = [node for node in graph.node if id(node) not in removed]
    gathers, tables = [], []
    for index, (name, value) in enumerate(zip(frontier, values)):
        table = f"time_table_{index}"
        tables.append(numpy_helper.from_array(np.ascontiguousarray(value), table))
        gathers.append(helper.make_node("Gather", [table, T_INPUT], [name], axis=0, name=f"fold_t_{index}"))
    del graph.node[:]
    graph.node.extend(gathers + kept)
    graph.initializer.extend(tables)
    used = {i for node in graph.node for i in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    for info in [v for v in graph.value_info if v.name in frontier]:
        graph.value_info.remove(info)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return {"folded_nodes": len(nodes), "tables": len(frontier),
            "table_bytes": int(sum(v.nbytes for v in values))}


def save_optimized(source: Path, out: Path, level: str = "all") -> None:
    """onnxruntime's optimised graph at `level`, saved (load it with opt_level 'disable')."""
    import onnxruntime as ort

    ort.InferenceSession(str(source), session_options({"opt_level": level, "save_optimized": str(out)}),
                         providers=["CPUExecutionProvider"])


def _calibration(shape: Tuple[int, ...], timesteps: int, batches: int = 8, batch: int = 16):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.items = iter([{X_INPUT: rng.standard_normal((batch, *shape), dtype=np.float32),
                                T_INPUT: rng.integers(0, timesteps, batch).astype(np.int32)} for _ in range(batches)])

        def get_next(self):
            return next(self.items, None)

    return Reader()


def quantize_int8_dynamic(source: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8)


def quantize_int8_static(source: Path, out: Path, shape: Tuple[int, ...], timesteps: int) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx
    from onnx import version_converter

    # per-channel DequantizeLinear (its `axis`) needs opset 13; MindSpore's exporter writes 11
    opset13 = out.with_name(out.stem + ".opset13.onnx")
    onnx.save(version_converter.convert_version(onnx.load(str(source)), 13), str(opset13))
    prepped = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(opset13), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(out), _calibration(shape, timesteps), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"])


# ---- the exploration --------------------------------------------------------------------------------------
def _gate(reference, candidate, shape, timesteps) -> Dict[str, Any]:
    """The export gate's measures on one batch: max |candidate - fp32|, cosine similarity, pass/fail."""
    from ..export.gate import Thresholds

    rng = np.random.default_rng(0)
    x = rng.standard_normal((GATE_BATCH, *shape), dtype=np.float32)
    t = np.linspace(0, timesteps - 1, GATE_BATCH).astype(np.int32)
    a, b = reference(x, t).astype(np.float64).ravel(), candidate(x, t).astype(np.float64).ravel()
    max_abs = float(np.abs(a - b).max())
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    limits = Thresholds()
    return {"max_abs": max_abs, "cosine": cosine, "gate_ok": max_abs <= limits.atol and cosine >= limits.min_cosine,
            "gate": f"atol {limits.atol:g}, cosine >= {limits.min_cosine}"}


def variant_list(bench, work: Path) -> Tuple[List[Tuple[str, Path, Dict[str, Any]]], Dict[str, str], Dict[str, Any]]:
    """(label, model, options) for each variant; errors of transformations that failed; their notes."""
    onnx_path = bench.onnx
    manifest = str(onnx_path.with_name(onnx_path.name + ".json"))
    base = {"manifest": manifest, "threads": bench.s.threads}
    shape = tuple(bench.config["model"][k] for k in ("channels", "image_size", "image_size"))
    variants = [
        ("runtime default: ORT_ENABLE_ALL (NCHWc), spinning", onnx_path, {**base}),
        ("ORT_ENABLE_EXTENDED (no NCHWc layout)", onnx_path, {**base, "opt_level": "extended"}),
        ("ORT_ENABLE_BASIC", onnx_path, {**base, "opt_level": "basic"}),
        ("1 intra-op thread", onnx_path, {**base, "threads": 1}),
        ("no thread spinning", onnx_path, {**base, "spinning": False}),
    ]
    errors: Dict[str, str] = {}
    notes: Dict[str, Any] = {}
    made: Dict[str, Path] = {}

    def make(name: str, build) -> Optional[Path]:
        path = work / f"{name}.onnx"
        try:
            notes[name] = build(path) or {}
            made[name] = path
            return path
        except Exception as exc:  # a transformation that fails is reported; the rest go on
            errors[name] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            return None

    work.mkdir(parents=True, exist_ok=True)
    if make("optimized_all", lambda p: save_optimized(onnx_path, p)):
        variants.append(("saved ORT_ENABLE_ALL model, loaded with optimisations off", made["optimized_all"],
                         {**base, "opt_level": "disable"}))
    if make("time_folded", lambda p: fold_time_mlp(onnx_path, p, bench.timesteps)):
        variants.append(("time-MLP folded into Gather tables", made["time_folded"], {**base}))
    if make("int8_dynamic", lambda p: quantize_int8_dynamic(onnx_path, p)):
        variants.append(("int8 dynamic (ConvInteger/MatMulInteger)", made["int8_dynamic"], {**base}))
    if make("int8_static_qdq", lambda p: quantize_int8_static(onnx_path, p, shape, bench.timesteps)):
        variants.append(("int8 static QDQ, per-channel (QLinearConv)", made["int8_static_qdq"], {**base}))
    return variants, errors, notes


def explore_onnxruntime(bench) -> Dict[str, Any]:
    """Time every variant at batch 1 and 64 (interleaved, with the matmul peak), gate it, report."""
    from .run import WorkerProcess, summarize

    bench.log("exploring onnxruntime variants ...")
    work = bench.s.work / "variants"
    variants, errors, notes = variant_list(bench, work)
    shape = tuple(bench.config["model"][k] for k in ("channels", "image_size", "image_size"))
    reference, _, _ = open_session(str(bench.onnx), {"manifest": str(bench.onnx) + ".json", "opt_level": "disable"})
    gates: Dict[str, Dict[str, Any]] = {}
    workers: Dict[str, WorkerProcess] = {}
    for index, (label, path, options) in enumerate(variants):
        try:
            eps, _, _ = open_session(str(path), options)
            gates[label] = _gate(reference, eps, shape, bench.timesteps)
            del eps
            workers[label] = WorkerProcess(f"variant{index}", {"artifact": str(path), "ort_options": options}, {},
                                           bench.s.work)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot load is reported
            errors[label] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    rows = []
    bench._peak_times = {}
    for batch in sorted({1, max(bench.s.batches)}):
        bench.log(f"  variants at batch {batch} ...")
        measured = bench.rotate(workers, "unet", {"batch": batch}, bench.s.repeats, bench.s.budget_s)
        for label, times in measured.items():
            rows.append({"label": label, "batch": batch, "open_s": workers[label].ready.get("open_s"),
                         **summarize(times, bench.flops_per_image * batch), **gates.get(label, {})})
    for worker in workers.values():
        worker.close()
    peak = bench.peak()
    for row in rows:
        row["peak_fraction_best"] = row["gflops_best"] / peak["gflops_best"]  # finalize_peak: the run's best
        base = next(r for r in rows if r["batch"] == row["batch"])
        row["vs_baseline"] = row["median_s"] / base["median_s"]
    return {"variants": rows, "errors": errors, "notes": notes, "peak": peak,
            "note": ("Each variant in its own worker, timed in turn with the matmul peak "
                     f"({peak['gflops_best']:.0f} GFLOP/s best in this rotation; % of peak is against the run's best); *x baseline* is "
                     "median time over the "
                     "runtime default's. The gate is the export gate's fp32 one (max abs error and cosine vs the "
                     "unoptimised fp32 model on a batch of 16 over t = 0..T-1).")}
