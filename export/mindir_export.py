"""MindIR: `mindspore.export(..., file_format="MINDIR")`, reloaded with `mindspore.load` + `nn.GraphCell`.

MindSpore 2.10 exports this U-Net with a dynamic batch axis (its reshapes are batch-agnostic), so
`batch=None` gives one graph for any batch size. The graph's inputs are bound by position (x, t).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..train import prepare_mindspore
prepare_mindspore()  # before MindSpore loads: oneDNN ISA cap, quiet logs
import mindspore as ms
from mindspore import nn

from ..runtime.config import ModelConfig
from ..runtime.errors import ToolkitError, first_line

from .formats import Exported
from .gate import EpsFn
from .source import cell_eps, example_inputs

SUFFIX = ".mindir"
LOADER = f"mindspore {ms.__version__} load + GraphCell"


def export(net: nn.Cell, model: ModelConfig, path: Path, batch: Optional[int], opset: Optional[int]) -> Exported:
    if opset is not None:
        raise ToolkitError("--opset applies to ONNX only")
    ms.export(net, *example_inputs(model, batch), file_name=str(path), file_format="MINDIR")
    return Exported(notes={"input_binding": "positional (x, t); MindIR graph input names are internal"})


def load_eps(path: Path) -> EpsFn:
    try:
        graph = ms.load(str(path))
    except (RuntimeError, ValueError) as exc:
        raise ToolkitError(f"not a loadable MindIR file: {path} ({first_line(exc)})") from exc
    return cell_eps(nn.GraphCell(graph))
