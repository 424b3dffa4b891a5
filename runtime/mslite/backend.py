"""The `mslite` runtime backend: a MindSpore Lite cloud MindIR model as `outputs = backend(*inputs)`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ToolkitError
from . import engine
from .convert import SUFFIX

if TYPE_CHECKING:
    from ..manifest import Manifest

Outputs = Union[np.ndarray, Tuple[np.ndarray, ...]]


class MsliteBackend:
    """Runs a Lite model (official API if importable, else the native bridge) on whole batches.

    Call it with the inputs named by `input_names` (default: the model's own order): each is cast to the
    dtype the loaded model reports (the converter turns int64 inputs into int32) and the model is resized
    to the given shapes when they change (dynamic axes only). Returns the one output, or a tuple of all.
    Chunking and padding to a fixed batch are `runtime.backends.Backend`'s. The process must not import
    MindSpore.
    """

    name = "mslite"

    def __init__(self, model_path: str | os.PathLike, threads: Optional[int] = None, device: str = "cpu",
                 input_names: Optional[Sequence[str]] = None):
        path = Path(model_path)
        if not path.is_file():
            raise ToolkitError(f"MindSpore Lite model not found: {path}")
        if path.suffix != SUFFIX:
            raise ToolkitError(f"{path}: not a MindSpore Lite model (expected a {SUFFIX} file from "
                               f"`python -m runtime.mslite.convert`)")
        self._model = engine.open_model(path, threads, device)
        names = list(self._model.input_names)
        self.input_names = list(input_names or names)
        if sorted(self.input_names) != sorted(names):
            raise ToolkitError(f"{path}: the model's inputs are {', '.join(names)}, expected {', '.join(self.input_names)}")
        self._order = [self.input_names.index(name) for name in names]  # the model's input k is our argument _order[k]
        self._loaded_shapes = [list(shape) for shape in self._model.input_shapes]  # model order; -1: a dynamic axis
        self.input_shapes = [self._loaded_shapes[names.index(name)] for name in self.input_names]
        self.output_names: List[str] = list(self._model.output_names)
        self.description = engine.describe()

    def __call__(self, *arrays: np.ndarray) -> Outputs:
        given = [arrays[k] for k in self._order]
        arrays = [np.ascontiguousarray(array, dtype=dtype) for array, dtype in zip(given, self._model.input_dtypes)]
        for name, array, shape in zip(self._model.input_names, arrays, self._loaded_shapes):
            _check_shape(name, array, shape)
        shapes = [list(array.shape) for array in arrays]
        if shapes != self._model.input_shapes:
            self._model.resize(shapes)
        outputs = self._model.predict(arrays)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _check_shape(name: str, array: np.ndarray, shape: Sequence[int]) -> None:
    """`array` must fit `shape` (-1: any size >= 1)."""
    if array.ndim != len(shape) or any(d != s and not (d == -1 and s >= 1) for d, s in zip(shape, array.shape)):
        wanted = ", ".join("B" if d == -1 else str(d) for d in shape)
        raise ToolkitError(f"{name} must have shape ({wanted}{',' if len(shape) == 1 else ''}) with B >= 1, "
                           f"got {array.shape}")


def open_mslite(artifact: Path, manifest: "Manifest", *, threads: Optional[int] = None,
                providers: Optional[Sequence[str]] = None) -> MsliteBackend:
    """The factory runtime.backends registers for `mslite` (`providers` is onnxruntime's; unused here)."""
    backend = MsliteBackend(artifact, threads=threads, input_names=[spec.name for spec in manifest.inputs])
    wanted = [[axis if isinstance(axis, int) else -1 for axis in spec.shape] for spec in manifest.inputs]
    if backend.input_shapes != wanted or backend.output_names != [spec.name for spec in manifest.outputs]:
        raise ToolkitError(f"{artifact} does not match its manifest: the model takes "
                           f"{_describe(backend.input_names, backend.input_shapes)} -> {', '.join(backend.output_names)}, "
                           f"the manifest says {_describe([s.name for s in manifest.inputs], wanted)} -> "
                           f"{', '.join(spec.name for spec in manifest.outputs)}")
    return backend


def _describe(names: Sequence[str], shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in zip(names, shapes))
