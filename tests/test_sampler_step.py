"""The sampler-step ONNX graph: a toy U-Net plus one scheduler step, run over whole trajectories on
onnxruntime and compared with the step contract computed in numpy (float64)."""
from __future__ import annotations

from typing import Callable, List, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ms_ddpm.export.sampler_step import INPUT_NAMES, OUTPUT_NAMES, build_step_model, step_model_io
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.schedulers import STEP_COLUMNS, StepTable, apply_step, make_scheduler
from ms_ddpm.runtime.schedules import ScheduleTables

C, H, W = 2, 5, 5
T = 200  # the tutorial's schedule length
OPSETS = (11, 17, 18)  # the exporter writes 11; 17 is next; 18 changes Split
LITE_OPS = {"Gather", "Split", "Shape", "Expand", "Mul", "Add", "Sub", "Div", "Clip", "Unsqueeze", "Concat"}
EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def toy_unet(opset: int) -> onnx.ModelProto:
    """eps = tanh(conv3x3(x) + embedding[t] + 0.005 t): x (batch, C, H, W) float32, t (batch,) int32."""
    rng = np.random.default_rng(0)
    constants = {"weight": rng.normal(0, 0.3, (C, C, 3, 3)), "bias": rng.normal(0, 0.1, C),
                 "embedding": rng.normal(0, 0.5, (T, C)), "scale": np.array(0.005)}
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in constants.items()]
    initializers.append(numpy_helper.from_array(np.array([-1, C, 1, 1], np.int64), "channels_shape"))
    initializers.append(numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "scalar_shape"))
    nodes = [
        helper.make_node("Conv", ["x", "weight", "bias"], ["conv"], kernel_shape=[3, 3], strides=[1, 1],
                         dilations=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Gather", ["embedding", "t"], ["embedded"]),
        helper.make_node("Reshape", ["embedded", "channels_shape"], ["embedded4"]),
        helper.make_node("Cast", ["t"], ["t_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["t_float", "scale"], ["t_scaled"]),
        helper.make_node("Reshape", ["t_scaled", "scalar_shape"], ["t4"]),
        helper.make_node("Add", ["conv", "embedded4"], ["sum"]),
        helper.make_node("Add", ["sum", "t4"], ["h"]),
        helper.make_node("Tanh", ["h"], ["eps"]),
    ]
    image = ["batch", C, H, W]
    graph = helper.make_graph(nodes, "toy_unet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, image),
                                                  helper.make_tensor_value_info("t", TensorProto.INT32, ["batch"])],
                              [helper.make_tensor_value_info("eps", TensorProto.FLOAT, image)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(columns: dict, steps: int) -> np.ndarray:
    weights = np.zeros((steps, len(STEP_COLUMNS)))
    for name, values in columns.items():
        weights[:, STEP_COLUMNS.index(name)] = values
    return weights


def _abar(timesteps: np.ndarray) -> np.ndarray:
    return ScheduleTables.from_name("linear", T).alphas_cumprod[timesteps]


def _noise_levels(timesteps: np.ndarray) -> dict:
    abar = _abar(timesteps)
    return {"sqrt_abar": np.sqrt(abar), "sqrt_one_minus_abar": np.sqrt(1 - abar)}


def ddpm_like() -> StepTable:
    """Respaced ancestral DDPM over 8 steps, x0 clipped: weights x, eps and z."""
    timesteps = np.round(np.linspace(T - 1, 0, 8)).astype(np.int64)
    abar = _abar(timesteps)
    abar_prev = np.append(abar[1:], 1.0)
    alpha = abar / abar_prev
    columns = {**_noise_levels(timesteps), "x": 1 / np.sqrt(alpha),
               "eps": -(1 - alpha) / np.sqrt((1 - abar) * alpha),
               "z": np.sqrt((1 - alpha) * (1 - abar_prev) / (1 - abar))}
    return StepTable(timesteps, _weights(columns, 8), history=0, clip_x0=True, noise_steps=7)


def dpmpp_like() -> StepTable:
    """A deterministic multistep table with one previous x0 (random, DPM-Solver++(2M)-sized weights)."""
    rng = np.random.default_rng(1)
    timesteps = np.array([199, 159, 119, 79, 39, 0])
    previous = rng.uniform(-0.4, 0.1, 6)
    previous[0] = 0.0
    columns = {**_noise_levels(timesteps), "x": rng.uniform(0.3, 1.0, 6), "x0": rng.uniform(0.1, 0.8, 6),
               "x0_prev1": previous}
    return StepTable(timesteps, _weights(columns, 6), history=1, clip_x0=False, noise_steps=0)


def three_m_like() -> StepTable:
    """Two previous x0s, eps and noise on the first three steps, x0 clipped (random weights)."""
    rng = np.random.default_rng(2)
    timesteps = np.array([199, 170, 140, 100, 60, 30, 10])
    prev1, prev2 = rng.uniform(-0.5, 0.2, 7), rng.uniform(-0.2, 0.3, 7)
    prev1[0] = prev2[:2] = 0.0
    columns = {**_noise_levels(timesteps), "x": rng.uniform(0.3, 1.0, 7), "eps": rng.uniform(-0.3, 0.3, 7),
               "x0": rng.uniform(0.1, 0.8, 7), "x0_prev1": prev1, "x0_prev2": prev2,
               "z": np.where(np.arange(7) < 3, rng.uniform(0.05, 0.3, 7), 0.0)}
    return StepTable(timesteps, _weights(columns, 7), history=2, clip_x0=True, noise_steps=3)


TABLES = {"ddpm": ddpm_like, "dpmpp": dpmpp_like, "3m": three_m_like}
Step = Tuple[np.ndarray, np.ndarray, np.ndarray]  # x_next, x0, state_next


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def unet_eps(unet: onnx.ModelProto) -> EpsFn:
    """The plain U-Net on onnxruntime."""
    plain = session(unet)
    return lambda x, t: plain.run(["eps"], {"x": x, "t": t})[0]


def draw(table: StepTable, batch: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    """x_T and one z per step (zeros from noise_steps on, as hosts pass them)."""
    rng = np.random.default_rng(batch)
    x_T = rng.standard_normal((batch, C, H, W), dtype=np.float32)
    zs = [rng.standard_normal(x_T.shape, dtype=np.float32) if i < table.noise_steps else np.zeros_like(x_T)
          for i in range(len(table.timesteps))]
    return x_T, zs


def contract_steps(eps_fn: EpsFn, table: StepTable, x_T: np.ndarray, zs: List[np.ndarray]) -> List[Step]:
    """The step contract in float64, the U-Net run in float32."""
    x = x_T.astype(np.float64)
    state = np.zeros((max(table.history, 1), *x.shape))
    steps = []
    for i, t in enumerate(table.timesteps):
        w = dict(zip(STEP_COLUMNS, table.weights[i]))
        s0, s1 = w["sqrt_abar"], w["sqrt_one_minus_abar"]
        eps = eps_fn(x.astype(np.float32), np.full(len(x), t, np.int32)).astype(np.float64)
        x0 = (x - s1 * eps) / s0
        if table.clip_x0:
            x0 = np.clip(x0, -1, 1)
            eps = (x - s0 * x0) / s1
        prev2 = state[1] if len(state) > 1 else 0.0
        x = (w["x"] * x + w["eps"] * eps + w["x0"] * x0 + w["x0_prev1"] * state[0] + w["x0_prev2"] * prev2
             + w["z"] * zs[i])
        state = np.stack([x0, state[0]][:len(state)])
        steps.append((x, x0, state))
    return steps


def graph_steps(step: ort.InferenceSession, table: StepTable, x_T: np.ndarray, zs: List[np.ndarray]) -> List[Step]:
    """The host loop: the step model S times."""
    x, state = x_T, np.zeros((max(table.history, 1), *x_T.shape), np.float32)
    steps = []
    for i in range(len(table.timesteps)):
        x, x0, state = step.run(list(OUTPUT_NAMES), {"x": x, "i": np.array([i], np.int64), "z": zs[i], "state": state})
        steps.append((x, x0, state))
    return steps


def max_errors(got: List[Step], expected: List[Step]) -> List[float]:
    return [max(float(np.max(np.abs(a - b))) for a, b in zip(g, e)) for g, e in zip(got, expected)]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", TABLES)
def test_trajectory_follows_the_step_contract(opset, name):
    unet = toy_unet(opset)
    table = TABLES[name]()
    model = build_step_model(unet, table, sampler=name)
    onnx.checker.check_model(model, full_check=True)
    eps_fn, step = unet_eps(unet), session(model)
    for batch in (1, 3):  # one model: the batch axis is symbolic
        x_T, zs = draw(table, batch)
        errors = max_errors(graph_steps(step, table, x_T, zs), contract_steps(eps_fn, table, x_T, zs))
        assert max(errors) <= 1e-5, (batch, errors)


@pytest.mark.parametrize("opset", OPSETS)
def test_graph_adds_only_lite_ops_for_its_opset(opset):
    model = build_step_model(toy_unet(opset), three_m_like())
    own = [node for node in model.graph.node if node.name.startswith("step/")]
    assert {node.op_type for node in own} <= LITE_OPS
    assert len(model.graph.node) == len(own) + len(toy_unet(opset).graph.node)
    assert [(entry.domain, entry.version) for entry in model.opset_import] == [("", opset)]
    unsqueezes = [node for node in own if node.op_type == "Unsqueeze"]
    assert unsqueezes and all(len(node.input) == (1 if opset < 13 else 2) for node in unsqueezes)


def test_io_and_metadata_describe_the_host_loop():
    table = three_m_like()
    model = build_step_model(toy_unet(17), table, sampler="3m-7")
    inputs, outputs = step_model_io(model)
    image = ["batch", C, H, W]
    assert [(s.name, s.dtype, s.shape) for s in inputs] == [
        ("x", "float32", image), ("i", "int64", [1]), ("z", "float32", image), ("state", "float32", [2, *image])]
    assert [(s.name, s.dtype, s.shape) for s in outputs] == [
        ("x_next", "float32", image), ("x0", "float32", image), ("state_next", "float32", [2, *image])]
    assert tuple(s.name for s in inputs) == INPUT_NAMES and tuple(s.name for s in outputs) == OUTPUT_NAMES
    props = {p.key: p.value for p in model.metadata_props}
    assert props["ms_ddpm.sampler"] == "3m-7" and "3m-7" in model.doc_string
    assert (props["ms_ddpm.steps"], props["ms_ddpm.noise_steps"], props["ms_ddpm.state_slots"]) == ("7", "3", "2")


SCHEDULERS = {"ddpm": ("ddpm", {}), "ddpm-clip": ("ddpm", {"clip_x0": True}), "ddim": ("ddim", {"eta": 0.5}),
              "dpmpp": ("dpmpp", {}), "dpmpp-sde": ("dpmpp-sde", {}), "dpmpp3m": ("dpmpp3m", {"clip_x0": True}),
              "dpmpp-sde-logsnr": ("dpmpp-sde", {"steps": 4, "spacing": "logsnr"}),
              "dpmpp-sde-karras": ("dpmpp-sde", {"steps": 3, "spacing": "karras"})}


def runtime_steps(eps_fn: EpsFn, table: StepTable, x_T: np.ndarray, zs: List[np.ndarray]) -> List[Step]:
    """The runtime's own step, `apply_step` (float32 arrays)."""
    x, history, steps = x_T, (), []
    for i, t in enumerate(table.timesteps):
        eps = eps_fn(x, np.full(len(x), t, np.int32))
        x, x0, history = apply_step(table, i, x, eps, history, zs[i] if i < table.noise_steps else None)
        steps.append((x, x0))
    return steps


@pytest.mark.parametrize("case", SCHEDULERS)
def test_scheduler_tables_match_the_runtime_step(case):
    """Each runtime scheduler's table, at its default steps (and the few-step noise-level spacings), on the
    tutorial's schedule (ddpm: all 200 steps)."""
    name, options = SCHEDULERS[case]
    table = make_scheduler(name, ScheduleTables.from_name("linear", T), **options).table()
    unet = toy_unet(17)
    eps_fn, step = unet_eps(unet), session(build_step_model(unet, table, sampler=case))
    x_T, zs = draw(table, 3)
    got = [(x, x0) for x, x0, _ in graph_steps(step, table, x_T, zs)]
    errors = max_errors(got, runtime_steps(eps_fn, table, x_T, zs))
    assert max(errors) <= 1e-5 and errors[-1] <= 1e-4, errors


@pytest.mark.parametrize("name", TABLES)
def test_every_input_is_consumed(name):
    """MindSpore Lite 2.0.0 cannot load a converted model that has an unused input."""
    graph = build_step_model(toy_unet(11), TABLES[name]()).graph
    consumed = {name for node in graph.node for name in node.input}
    assert all(info.name in consumed for info in graph.input)


def test_rejects_a_table_without_noise_levels_and_an_old_opset():
    table = dpmpp_like()
    weights = table.weights.copy()
    weights[-1, STEP_COLUMNS.index("sqrt_one_minus_abar")] = 0.0
    with pytest.raises(ToolkitError, match="sqrt_one_minus_abar"):
        build_step_model(toy_unet(11), StepTable(table.timesteps, weights, 1, False, 0))
    with pytest.raises(ToolkitError, match="opset"):
        build_step_model(toy_unet(10), table)
