"""The export formats, looked up by name. Each format is one module with the same small interface:

    SUFFIX: str                                       the artifact's file extension, e.g. ".onnx"
    LOADER: str                                       how `load_eps` runs the artifact (for reports)
    export(net, model, path, batch, opset) -> Exported  write the artifact at `path` (uses MindSpore)
    load_eps(path) -> EpsFn                           load it back the way a consumer would
    THRESHOLDS: Thresholds (optional)                 the gate's default thresholds, if not the fp32 ones

`batch` is None for a symbolic batch axis, else the fixed batch size. Adding a format is one module
plus one line in FORMATS. This module is light: no MindSpore.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Dict, Optional

from ..runtime.errors import ToolkitError

FORMATS = {"onnx": ".onnx_export", "mindir": ".mindir_export", "mslite": ".mslite_export"}  # modules of this package

INPUT_NAMES = ("x", "t")
OUTPUT_NAME = "eps"
BATCH_AXIS = "batch"


@dataclass(frozen=True)
class Exported:
    """What a format's `export` reports for the manifest."""

    opset: Optional[int] = None
    notes: Dict[str, Any] = field(default_factory=dict)  # goes to the manifest's `extra`


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ToolkitError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return name


def format_module(name: str) -> ModuleType:
    return importlib.import_module(FORMATS[check_format(name)], __package__)

