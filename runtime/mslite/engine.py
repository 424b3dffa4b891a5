"""Which way this process reaches MindSpore Lite, and the one-Lite-per-process rule.

MindSpore and the Lite libraries each ship a `libmindspore_core.so` whose symbols clash, in either
import order. Lite therefore refuses a process that has imported `mindspore`, and once Lite is
loaded `import mindspore` fails with an ImportError instead of crashing the process later.
(A child process per call, or `dlmopen` into a new link namespace, would allow both; the sampling
runtime never imports MindSpore, so refusing is simpler and costs nothing there.)
"""
from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path
from typing import Optional

from ..errors import ToolkitError
from . import native, official


class _MindSporeBlocker(importlib.abc.MetaPathFinder):
    """Turns `import mindspore` into a clear ImportError once Lite is loaded."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "mindspore" or fullname.startswith("mindspore."):
            raise ImportError("mindspore cannot be imported into a process that has loaded MindSpore Lite "
                              "(their libmindspore_core.so libraries clash); use a separate process")
        return None


def claim_process() -> None:
    """Make sure this process can host Lite, and keep MindSpore out of it from now on."""
    if "mindspore" in sys.modules:
        raise ToolkitError("MindSpore Lite cannot run in a process that has imported mindspore (their "
                           "libmindspore_core.so libraries clash): run the Lite backend in a separate process")
    if not any(isinstance(finder, _MindSporeBlocker) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MindSporeBlocker())


def use_official() -> bool:
    """The official `mindspore_lite` API whenever it imports, else the native bridge."""
    return official.available()


def describe() -> str:
    """E.g. "MindSpore Lite 2.0.0 via native bridge"."""
    if use_official():
        return f"MindSpore Lite {official.version()} via the official Python API"
    return f"MindSpore Lite {native.version()} via native bridge"


def open_model(path: Path, threads: Optional[int], device: str):
    """A built model (OfficialModel or NativeModel) for a cloud MindIR file."""
    claim_process()
    if use_official():
        return official.OfficialModel(path, threads, device)
    if device != "cpu":
        raise ToolkitError(f"the MindSpore Lite native bridge runs on CPU only (asked for {device!r}); "
                           "other devices need the official mindspore_lite package for that device")
    return native.NativeModel(path, threads)


def convert_onnx_here(onnx_path: Path, output_base: Path) -> None:
    """Convert in this process (callers run this in a child process: see convert.py)."""
    claim_process()
    (official if use_official() else native).convert_onnx(onnx_path, output_base)
