"""MindSpore Lite for the toolkit: the `mslite` backend and the ONNX -> Lite converter.

Lite is reached through the official `mindspore_lite` Python API where it imports, otherwise through
a small native bridge over the PyPI 2.0.0 wheel's C++ libraries (build it: `python -m ms_ddpm.runtime.mslite.build`).
Importing this package loads no Lite library, and its names are imported on first use, so that
`python -m ms_ddpm.runtime.mslite.convert` (or .build, .child) runs without a double import.
"""
from typing import Any

__all__ = ["MsliteBackend", "open_mslite", "convert_onnx", "predict_in_child"]
_HOMES = {"MsliteBackend": "backend", "open_mslite": "backend", "convert_onnx": "convert", "predict_in_child": "child"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
