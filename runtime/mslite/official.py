"""MindSpore Lite through its official Python API (`mindspore_lite`), where a wheel for this Python exists.

Written against the documented 2.x API (Context.target / Context.cpu.thread_num, Model.build_from_file,
get_inputs, resize, predict; Converter.save_type / optimize / convert). PyPI's only wheel is for
CPython 3.7, so this path is not exercised on the toolkit's CI; the native bridge is.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from ..errors import ToolkitError

_DTYPE_NAMES = {"FLOAT32": "float32", "INT32": "int32", "INT64": "int64"}


def _module() -> Any:
    return importlib.import_module("mindspore_lite")


def available() -> bool:
    """True when `import mindspore_lite` works in this interpreter."""
    try:
        _module()
    except Exception:  # ImportError, or a binary built for another Python failing to load
        return False
    return True


def version() -> str:
    return str(getattr(_module(), "__version__", "unknown"))


def _lite_error(what: str, exc: Exception) -> ToolkitError:
    return ToolkitError(f"{what}: {' '.join(str(exc).split()) or type(exc).__name__}")


class OfficialModel:
    """Same interface as native.NativeModel (input/output names, shapes, dtypes; resize; predict), on
    `mindspore_lite.Model`."""

    def __init__(self, path: Path, threads: Optional[int], device: str):
        mslite = _module()
        try:
            context = mslite.Context()
            context.target = [device]
            if threads:
                context.cpu.thread_num = threads
            self._model = mslite.Model()
            self._model.build_from_file(str(path), mslite.ModelType.MINDIR, context)
            self._inputs = self._model.get_inputs()
            self.output_names = [tensor.name for tensor in self._model.get_outputs()]
        except Exception as exc:  # the API raises RuntimeError/ValueError/TypeError for bad models
            raise _lite_error(f"{path}: cannot load the Lite model", exc) from exc
        self.input_names = [tensor.name for tensor in self._inputs]
        self.input_shapes: List[List[int]] = [list(tensor.shape) for tensor in self._inputs]
        self.input_dtypes = [_DTYPE_NAMES.get(getattr(tensor.dtype, "name", ""), "unsupported")
                             for tensor in self._inputs]

    def resize(self, shapes: Sequence[Sequence[int]]) -> None:
        try:
            self._model.resize(self._inputs, [list(shape) for shape in shapes])
        except Exception as exc:
            raise _lite_error("cannot resize the Lite model", exc) from exc
        self.input_shapes = [list(shape) for shape in shapes]

    def predict(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        try:
            for tensor, array in zip(self._inputs, arrays):
                tensor.set_data_from_numpy(array)
            outputs = self._model.predict(self._inputs)
            return [np.asarray(output.get_data_to_numpy(), dtype=np.float32) for output in outputs]
        except Exception as exc:
            raise _lite_error("Lite inference failed", exc) from exc


def convert_onnx(onnx_path: Path, output_base: Path) -> None:
    """The official converter; like the bridge, it writes `output_base` + ".mindir"."""
    mslite = _module()
    try:
        converter = mslite.Converter()
        converter.save_type = mslite.ModelType.MINDIR
        converter.optimize = "general"
        converter.convert(mslite.FmkType.ONNX, str(onnx_path), str(output_base))
    except Exception as exc:
        raise _lite_error("the Lite converter rejected the model", exc) from exc
