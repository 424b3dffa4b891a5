"""Backends: `eps = backend(x_t, t)` over an exported U-Net (or `x_next, x0, state_next = backend(x, i, z,
state)` over a sampler-step model), whatever library runs it.

A backend library is imported only when its backend is opened, so the runtime needs nothing but
numpy (+ pillow for images) until then. Each entry of `BACKENDS` names a factory
`factory(artifact, manifest, threads=..., providers=...) -> Runner` (and `precision=...` where it offers more
than fp32) that runs one batch the artifact accepts; `Backend` wraps it with the artifact's batch policy
(chunk to `batch`, pad to a fixed size).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ToolkitError, check_minimum, first_line
from .manifest import Manifest, TensorSpec
from .onnx_external import check_external_data
from .ort_session import create_session

Runner = Callable[..., Union[np.ndarray, Tuple[np.ndarray, ...]]]  # the inputs of one accepted batch -> the output(s)
BatchAxes = Tuple[Tuple[Optional[int], ...], Tuple[int, ...]]  # each input's and output's batch axis (None: none)
UNET_BATCH_AXES: BatchAxes = ((0, 0), (0,))


@dataclass(frozen=True)
class BackendSpec:
    format: str  # the manifest format it runs
    factory: str  # ".module:function" in this package, imported only when this backend is opened
    library: str  # the Python module it needs
    install: str  # how to install that module
    thread_safe: bool = False  # whether its runner may be called from several threads at once
    precisions: Tuple[str, ...] = ("fp32",)  # the precisions it runs, the default first


BACKENDS = {
    "onnxruntime": BackendSpec("onnx", ".backends:open_onnxruntime", "onnxruntime",
                               "pip install onnxruntime (or onnxruntime-gpu for CUDA)",
                               thread_safe=True),  # InferenceSession.run is documented as thread-safe
    # OpenVINO's CPU plug-in: one infer request (not thread-safe); bf16 only when asked (runtime/equivalence.py).
    "openvino": BackendSpec("onnx", ".backends:open_openvino", "openvino",
                            "pip install openvino (or pip install 'ms-ddpm[openvino]')", precisions=("fp32", "bf16")),
    "mindspore": BackendSpec("mindir", ".backends:open_mindspore", "mindspore", "pip install mindspore==2.10.0"),
    # MindSpore Lite: its own package provides `.mslite.open_mslite`.
    "mslite": BackendSpec("mslite", ".mslite:open_mslite", "mindspore_lite",
                          "install a mindspore-lite build matching your MindSpore version"),
}


def backend_for_format(artifact_format: str) -> str:
    """The default backend of an artifact format."""
    return next(name for name, spec in BACKENDS.items() if spec.format == artifact_format)


class Backend:
    """eps = backend(x, t) (or a step model's outputs = backend(x, i, z, state)) for any number of images.

    Splits the batch into chunks of `fixed_batch` (an artifact exported for one batch size; the last
    chunk is zero-padded and the padding dropped: the one padding rule of every backend) or else of
    `max_batch` (None: all at once), along each tensor's batch axis (`batch_axes`, the manifest's).
    Safe to call from several threads: a runner that is not `thread_safe` is called by one at a time.
    """

    def __init__(self, name: str, run: Runner, fixed_batch: Optional[int] = None, max_batch: Optional[int] = None,
                 thread_safe: bool = False, batch_axes: BatchAxes = UNET_BATCH_AXES):
        self.name = name
        self.run = run
        self.fixed_batch = fixed_batch
        self.max_batch = max_batch
        self.batch_axes = batch_axes
        self._one_at_a_time = contextlib.nullcontext() if thread_safe else threading.Lock()

    def __call__(self, *inputs: np.ndarray) -> Union[np.ndarray, Tuple[np.ndarray, ...]]:
        input_axes, output_axes = self.batch_axes
        count = inputs[0].shape[input_axes[0]]
        size = self.fixed_batch or self.max_batch or count
        chunks = [self._run_chunk(inputs, start, min(start + size, count)) for start in range(0, count, size)]
        outputs = chunks[0] if len(chunks) == 1 else \
            tuple(np.concatenate(parts, axis) for parts, axis in zip(zip(*chunks), output_axes))
        return outputs[0] if len(outputs) == 1 else outputs

    def _run_chunk(self, inputs: Sequence[np.ndarray], start: int, stop: int) -> Tuple[np.ndarray, ...]:
        input_axes, output_axes = self.batch_axes
        size = self.fixed_batch or stop - start
        chunk = [array if axis is None else _zero_pad(_batch_slice(array, axis, start, stop), axis, size)
                 for array, axis in zip(inputs, input_axes)]
        with self._one_at_a_time:
            outputs = self.run(*chunk)
        outputs = (outputs,) if len(output_axes) == 1 else outputs
        return tuple(_batch_slice(output, axis, 0, stop - start) for output, axis in zip(outputs, output_axes))


def _batch_slice(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    return array[(slice(None),) * axis + (slice(start, stop),)]


def _zero_pad(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """`array` with zeros appended along `axis` up to `size`."""
    missing = size - array.shape[axis]
    if not missing:
        return array
    shape = list(array.shape)
    shape[axis] = missing
    return np.concatenate([array, np.zeros(shape, array.dtype)], axis)


def open_backend(name: str, artifact: Path, manifest: Manifest, *, batch: Optional[int] = None,
                 threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                 precision: Optional[str] = None) -> Backend:
    """Open `artifact` with the named backend (`precision` None: its default, fp32); every problem is a
    one-line ToolkitError."""
    spec = check_backend(name, artifact, manifest, precision)
    if providers and name != "onnxruntime":
        raise ToolkitError("execution providers apply to the onnxruntime backend only")
    check_minimum("--batch", batch)
    check_minimum("--threads", threads)
    fixed = manifest.fixed_batch
    if fixed and batch and batch != fixed:
        raise ToolkitError(f"{artifact} was exported for batch size {fixed}; use --batch {fixed} or leave it out")
    options = {"precision": precision or spec.precisions[0]} if len(spec.precisions) > 1 else {}
    run = _factory(name)(artifact, manifest, threads=threads, providers=providers, **options)
    return Backend(name, run, fixed_batch=fixed, max_batch=batch, thread_safe=spec.thread_safe,
                   batch_axes=manifest.batch_axes)


def check_backend(name: str, artifact: Path, manifest: Manifest, precision: Optional[str] = None) -> BackendSpec:
    """The named backend's spec, if it runs `artifact` (of `manifest`) in `precision` (None: its default)."""
    spec = BACKENDS.get(name)
    if spec is None:
        raise ToolkitError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if spec.format != manifest.format:
        raise ToolkitError(f"the {name} backend runs {spec.format} artifacts, but {artifact} is {manifest.format} "
                           f"(use --backend {backend_for_format(manifest.format)})")
    if precision is not None and precision not in spec.precisions:
        offering = [other for other, entry in BACKENDS.items() if precision in entry.precisions]
        raise ToolkitError(f"the {name} backend runs {' or '.join(spec.precisions)}, not {precision!r}"
                           + (f" ({precision}: --backend {' or '.join(offering)})" if offering else ""))
    return spec


def _factory(name: str) -> Callable[..., Runner]:
    module_name, function = BACKENDS[name].factory.split(":")
    try:
        factory = getattr(importlib.import_module(module_name, __package__), function, None)
    except ModuleNotFoundError as exc:
        if exc.name != importlib.util.resolve_name(module_name, __package__):
            raise
        factory = None
    if factory is None:
        raise ToolkitError(f"the {name} backend is not part of this install")
    return factory


def import_library(backend: str) -> ModuleType:
    """The backend's library, or a one-line error naming the install command."""
    spec = BACKENDS[backend]
    try:
        return importlib.import_module(spec.library)
    except ImportError as exc:
        raise ToolkitError(f"the {backend} backend needs {spec.library}, which is not installed: {spec.install}") from exc


def open_onnxruntime(artifact: Path, manifest: Manifest, *, threads: Optional[int] = None,
                     providers: Optional[Sequence[str]] = None) -> Runner:
    ort = import_library("onnxruntime")
    providers = list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    for provider in providers:
        if provider not in available:
            raise ToolkitError(f"onnxruntime execution provider {provider} is not available "
                               f"(this install has: {', '.join(available)}; CUDA and TensorRT come with pip install onnxruntime-gpu)")
    check_external_data(artifact)
    try:
        session, keep_cache = create_session(ort, artifact, providers, threads)  # options, optimised-model cache
    except Exception as exc:  # onnxruntime raises its own exception types with multi-line text
        raise _unreadable_onnx(artifact, first_line(exc)) from exc
    if session.get_providers()[0] != providers[0]:
        raise ToolkitError(f"onnxruntime could not start {providers[0]} (it fell back to {session.get_providers()[0]})")
    check_signature(artifact, manifest, [_onnx_spec(arg) for arg in session.get_inputs()],
                    [_onnx_spec(arg) for arg in session.get_outputs()])
    keep_cache()  # only an artifact found good gets a cache beside it
    return _named_runner(manifest, session.run)


OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # precision -> OpenVINO's INFERENCE_PRECISION_HINT
# MindSpore's oneDNN cap (train/__init__.py sets it in every process that loads MindSpore). OpenVINO's CPU plug-in
# has its own oneDNN, which reads the variable once, when the plug-in loads: capped at AVX2 it would lose its
# AVX-512/AMX kernels (bf16 would not even compile), so the plug-in loads without it.
ONEDNN_ISA_VAR = "ONEDNN_MAX_CPU_ISA"


def open_openvino(artifact: Path, manifest: Manifest, *, threads: Optional[int] = None,
                  providers: Optional[Sequence[str]] = None, precision: str = "fp32") -> Runner:
    """The ONNX on OpenVINO's CPU plug-in, in `precision` (pinned: on CPUs with AMX or AVX512-BF16 OpenVINO's
    own default would be bf16); `threads` sets INFERENCE_NUM_THREADS."""
    ov = import_library("openvino")
    check_external_data(artifact)
    core = ov.Core()
    try:
        model = core.read_model(str(artifact))
    except RuntimeError as exc:  # OpenVINO's text: "Exception from <source file>" lines, the reason last
        raise _unreadable_onnx(artifact, _last_line(exc)) from exc
    check_signature(artifact, manifest, [_openvino_spec(port) for port in model.inputs],
                    [_openvino_spec(port) for port in model.outputs])
    with _without_env(ONEDNN_ISA_VAR):  # the first use of the CPU plug-in loads it, with its oneDNN
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision != "fp32" and precision.upper() not in capabilities:
        raise ToolkitError(f"this CPU has no {precision} support in OpenVINO (it needs AVX512-BF16 or AMX); use fp32")
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
              **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    try:
        request = core.compile_model(model, "CPU", config).create_infer_request()
    except RuntimeError as exc:
        raise ToolkitError(f"OpenVINO could not compile {artifact} in {precision}: {_last_line(exc)}") from exc

    def infer(outputs: List[str], feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        results = request.infer(feeds)  # copies of the outputs
        return [results[name] for name in outputs]

    return _named_runner(manifest, infer)


@contextlib.contextmanager
def _without_env(name: str) -> Iterator[None]:
    """The environment variable `name` unset for the duration (restored after)."""
    value = os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value


def _named_runner(manifest: Manifest, infer: Callable[[List[str], Dict[str, np.ndarray]], Sequence[np.ndarray]]
                  ) -> Runner:
    """`run(*arrays)`: the manifest's inputs, in order, through `infer(output names, {input name: array})`;
    returns the one output, or the outputs as a tuple."""
    names, outputs = [spec.name for spec in manifest.inputs], [spec.name for spec in manifest.outputs]

    def run(*arrays: np.ndarray) -> Union[np.ndarray, Tuple[np.ndarray, ...]]:
        results = infer(outputs, dict(zip(names, arrays)))
        return results[0] if len(results) == 1 else tuple(results)

    return run


def _unreadable_onnx(artifact: Path, reason: str) -> ToolkitError:
    return ToolkitError(f"corrupt or unreadable ONNX artifact: {artifact} ({reason})")


def _last_line(exc: BaseException, limit: int = 300) -> str:
    """An OpenVINO exception's last line: its reason, after the lines naming OpenVINO's source files."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip()[:limit] if lines else type(exc).__name__


def open_mindspore(artifact: Path, manifest: Manifest, *, threads: Optional[int] = None,
                   providers: Optional[Sequence[str]] = None) -> Runner:
    """MindIR through `mindspore.load` + `nn.GraphCell`; `threads` sets MindSpore's CPU kernel threads."""
    ms = import_library("mindspore")
    if threads:
        try:
            ms.device_context.cpu.op_tuning.threads_num(threads)
        except RuntimeError as exc:  # it can be set once per process
            raise ToolkitError(f"cannot set MindSpore's thread count: {first_line(exc)}") from exc
    try:
        cell = ms.nn.GraphCell(ms.load(str(artifact)))
    except Exception as exc:  # MindSpore raises RuntimeError/ValueError with long text
        raise ToolkitError(f"corrupt or unreadable MindIR artifact: {artifact} ({first_line(exc)})") from exc

    def run(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        try:
            return cell(ms.Tensor(x), ms.Tensor(t)).asnumpy()
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ToolkitError(f"MindIR artifact {artifact} rejected inputs of shape {x.shape} "
                               f"(does it match its manifest?): {first_line(exc)}") from exc

    return run


_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64",
                "tensor(float16)": "float16", "tensor(double)": "float64"}


def _onnx_spec(arg: Any) -> TensorSpec:
    return TensorSpec(arg.name, _ONNX_DTYPES.get(arg.type, arg.type), list(arg.shape))


def _openvino_spec(port: Any) -> TensorSpec:
    """An OpenVINO model input or output; a dynamic axis is "?" (free, as onnxruntime's symbolic ones)."""
    return TensorSpec(port.get_any_name(), str(port.get_element_type().to_dtype()),
                      [dim.get_length() if dim.is_static else str(dim) for dim in port.get_partial_shape()])


def check_signature(artifact: Path, manifest: Manifest, inputs: List[TensorSpec], outputs: List[TensorSpec]) -> None:
    """The model's own inputs and outputs must be the manifest's: names, dtypes and shapes."""
    if len(inputs) != len(manifest.inputs) or len(outputs) != len(manifest.outputs):
        raise ToolkitError(f"{artifact} does not match its manifest: {len(inputs)} inputs and {len(outputs)} "
                           f"outputs, the manifest says {len(manifest.inputs)} and {len(manifest.outputs)}")
    for want, got in zip(manifest.inputs + manifest.outputs, inputs + outputs):
        if want.name != got.name or want.dtype != got.dtype or not _shapes_match(want.shape, got.shape):
            raise ToolkitError(f"{artifact} does not match its manifest: the model has {got.name} {got.dtype} "
                               f"{got.shape}, the manifest says {want.name} {want.dtype} {want.shape}")


def _shapes_match(want: List[Any], got: List[Any]) -> bool:
    """An axis the manifest fixes must be that size (or free) in the model; a symbolic one must be free."""
    return len(want) == len(got) and all(not isinstance(g, int) or g == w for w, g in zip(want, got))
