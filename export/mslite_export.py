"""MindSpore Lite: the ONNX export, converted by the Lite converter into a cloud MindIR and reloaded by
the `mslite` backend, both in child processes (Lite cannot share a process with MindSpore).

The converter takes the optimised ONNX graph (export.onnx_optimize) without its GELU rewrite: Lite 2.0.0
runs the LayerNormalization graph in 0.75x the plain graph's time at batch 64, and its Gelu kernel adds
nothing to that but triples the error against MindSpore (max abs 6e-4 vs 2e-4 on the untrained
tutorial-size U-Net; docs/benchmarks.md). A fixed-batch export converts the plain graph: Lite 2.0.0 runs
a LayerNormalization of static shape wrongly (max abs 0.28 on the tiny test model; dynamic shapes are
right). `optimize=False` converts the plain graph.

Why ONNX and not MindIR as the converter's input: the only Lite on PyPI (2.0.0) reads MindIR up to
version 1, and MindSpore 2.10 writes version 3. Why cloud `.mindir` and not device `.ms`: the wheel's
runtime is the cloud-inference one (extendrt), whose documented model suffix is `.mindir`; the `.ms`
format is marked for deprecation in Lite 2.x.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..train import prepare_mindspore
prepare_mindspore()  # before MindSpore loads: oneDNN ISA cap, quiet logs
from mindspore import nn

from ..runtime.config import ModelConfig
from ..runtime.mslite import convert_onnx, predict_in_child

from . import onnx_export
from .formats import Exported
from .gate import MSLITE_THRESHOLDS, EpsFn

SUFFIX = ".lite.mindir"  # distinct from the mindir format's unet.mindir
LOADER = "MindSpore Lite (runtime.mslite backend, child process)"
THRESHOLDS = MSLITE_THRESHOLDS
OPTIMIZES = True  # export() takes `optimize` (export.pipeline passes it)
LITE_SKIP = ("gelus",)  # rewrites of export.onnx_optimize that Lite does not gain from (see above)


def export(net: nn.Cell, model: ModelConfig, path: Path, batch: Optional[int], opset: Optional[int],
           optimize: bool = False) -> Exported:
    with tempfile.TemporaryDirectory(prefix="mslite-export.") as work:
        onnx_path = Path(work) / "unet.onnx"
        exported = onnx_export.export(net, model, onnx_path, batch, opset, optimize and batch is None, skip=LITE_SKIP)
        convert_onnx(onnx_path, path)
    return Exported(opset=exported.opset, notes={**exported.notes, "lite": "ONNX -> MindSpore Lite converter, cloud MindIR"})


def load_eps(path: Path) -> EpsFn:
    return lambda x, t: predict_in_child(path, [(x, t)])[0]
