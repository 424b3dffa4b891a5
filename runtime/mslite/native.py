"""MindSpore Lite through the native bridge (bridge.cpp, loaded with ctypes).

Only CPU: the PyPI wheel ships the CPU kernels of Lite's cloud-inference runtime.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np

from ..errors import ToolkitError
from .build import BUILD_COMMAND, LITE_VERSION, bridge_library, check_platform

MAX_RANK = 8
MAX_NAME = 1024
MODEL_TYPE_MINDIR = 0  # mindspore::ModelType::kMindIR: the cloud MindIR the converter writes as .mindir
DTYPES = {43: "float32", 34: "int32", 35: "int64"}  # mindspore::DataType codes
# Lite's glog lines: "[ERROR] LITE(pid,tid,python):date [file:line] function] message"
_LOGGED_ERROR = re.compile(r"^\[ERROR\] [^\[]*\[[^\]]*\] [^\]]*\] ?(.*)$")

_I64P = ctypes.POINTER(ctypes.c_int64)
_SIGNATURES = {
    "msl_last_error": (ctypes.c_char_p, []),
    "msl_model_load": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]),
    "msl_model_free": (None, [ctypes.c_void_p]),
    "msl_num_tensors": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "msl_input_shape": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, _I64P, ctypes.c_int]),
    "msl_input_dtype": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "msl_tensor_name": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]),
    "msl_resize": (ctypes.c_int, [ctypes.c_void_p, _I64P, ctypes.POINTER(ctypes.c_int), ctypes.c_int]),
    "msl_predict": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                   ctypes.POINTER(ctypes.c_size_t), ctypes.c_int]),
    "msl_output_shape": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, _I64P, ctypes.c_int]),
    "msl_output_copy": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]),
    "msl_convert_onnx": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]),
}
_library: Optional[ctypes.CDLL] = None


def library() -> ctypes.CDLL:
    """Load the compiled bridge once (it pulls in the Lite libraries through its RPATH)."""
    global _library
    if _library is None:
        check_platform()
        path = bridge_library()
        if not path.is_file():
            raise ToolkitError(f"MindSpore Lite native bridge not built ({path} is missing): run `{BUILD_COMMAND}`")
        os.environ.setdefault("GLOG_v", "3")  # Lite's glog: errors only
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise ToolkitError(f"cannot load the MindSpore Lite bridge {path}: {exc} "
                               f"(rebuild: `{BUILD_COMMAND}`)") from exc
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
        _library = lib
    return _library


def version() -> str:
    """The version of the wheel the bridge is built against (the library's own Version() is empty)."""
    return LITE_VERSION


def _check(status: int) -> None:
    if status != 0:
        raise ToolkitError(_last_error())


def _last_error() -> str:
    return " ".join(library().msl_last_error().decode(errors="replace").split())  # one line


def logged_errors(text: str) -> List[str]:
    """The messages of the [ERROR] lines Lite logged (its Status strings are often just "Common error code.")."""
    found = (_LOGGED_ERROR.match(line) for line in text.splitlines())
    return [match.group(1).strip() for match in found if match and match.group(1).strip()]


@contextlib.contextmanager
def _captured_stderr() -> Iterator[List[str]]:
    """Collect what native code writes to file descriptor 2 inside the block (it is echoed afterwards)."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: List[str] = []
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode(errors="replace").splitlines())


def _shape(getter, handle: int, index: int) -> List[int]:
    dims = (ctypes.c_int64 * MAX_RANK)()
    rank = getter(handle, index, dims, MAX_RANK)
    if rank < 0:
        raise ToolkitError(_last_error())
    return [int(d) for d in dims[:rank]]


def _name(handle: int, output: bool, index: int) -> str:
    buffer = ctypes.create_string_buffer(MAX_NAME)
    if library().msl_tensor_name(handle, int(output), index, buffer, MAX_NAME) < 0:
        raise ToolkitError(_last_error())
    return buffer.value.decode(errors="replace")


def _count(handle: int, output: bool) -> int:
    count = library().msl_num_tensors(handle, int(output))
    if count < 0:
        raise ToolkitError(_last_error())
    return count


class NativeModel:
    """A built Lite model: its inputs' names, shapes and types, its output names, resize, and predict
    (every output, float32)."""

    def __init__(self, path: Path, threads: Optional[int]):
        lib = library()
        with _captured_stderr() as log:
            handle = lib.msl_model_load(str(path).encode(), MODEL_TYPE_MINDIR, threads or 0)
        if not handle:
            reasons = logged_errors("\n".join(log)) or [_last_error()]
            raise ToolkitError(f"{path}: MindSpore Lite {version()} cannot load it as a cloud MindIR "
                               f"model ({reasons[-1]})")
        if log:
            print("\n".join(log), file=sys.stderr)
        self._handle = handle
        count = _count(handle, output=False)
        self.input_names = [_name(handle, False, i) for i in range(count)]
        self.output_names = [_name(handle, True, i) for i in range(_count(handle, output=True))]
        self.input_shapes = [_shape(lib.msl_input_shape, handle, i) for i in range(count)]
        self.input_dtypes = [DTYPES.get(lib.msl_input_dtype(handle, i), "unsupported") for i in range(count)]

    def resize(self, shapes: Sequence[Sequence[int]]) -> None:
        flat = [int(d) for shape in shapes for d in shape]
        ranks = [len(shape) for shape in shapes]
        _check(library().msl_resize(self._handle, (ctypes.c_int64 * len(flat))(*flat),
                                    (ctypes.c_int * len(ranks))(*ranks), len(ranks)))
        self.input_shapes = [list(shape) for shape in shapes]

    def predict(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Run on C-contiguous arrays of the inputs' exact shapes and types; returns every output, in order."""
        lib = library()
        pointers = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
        sizes = (ctypes.c_size_t * len(arrays))(*[a.nbytes for a in arrays])
        _check(lib.msl_predict(self._handle, pointers, sizes, len(arrays)))
        return [self._output(index) for index in range(len(self.output_names))]

    def _output(self, index: int) -> np.ndarray:
        output = np.empty(_shape(library().msl_output_shape, self._handle, index), dtype=np.float32)
        _check(library().msl_output_copy(self._handle, index, output.ctypes.data, output.nbytes))
        return output

    def __del__(self) -> None:
        if getattr(self, "_handle", None) and _library is not None:
            _library.msl_model_free(self._handle)
            self._handle = None


def convert_onnx(onnx_path: Path, output_base: Path) -> None:
    """Run the Lite converter in this process; it writes `output_base` + ".mindir"."""
    _check(library().msl_convert_onnx(str(onnx_path).encode(), str(output_base).encode(), MODEL_TYPE_MINDIR))
