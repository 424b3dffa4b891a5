"""Make the models a bench run times: a checkpoint (given, or an untrained one built here) exported to
the formats asked for. Imports MindSpore, so the bench runs it as a child process:

    python -m ms_ddpm.bench.prepare '{"work": "/abs/work", "formats": ["onnx"], "checkpoint": null, "tiny": true}'

Answers with the checkpoint and a list of artifacts ({format, graph, path}); an export that fails
(e.g. no Lite bridge built) is reported with its error, the others are still made. The ONNX comes
twice: the optimised graph (the export's default) and the plain one (`--no-optimize`). The numeric
gate is skipped: latency does not depend on it (`ms-ddpm verify` does).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..runtime.config import Config, ModelConfig
from ..runtime.errors import first_line, run_main

from .harness import reply


def prepare(work: str, formats: List[str], checkpoint: Optional[str], tiny: bool) -> Dict[str, Any]:
    """Export `checkpoint` (None: an untrained tutorial-size U-Net, or an 8x8 one if `tiny`) to `formats` in `work`."""
    from ..train import prepare_mindspore

    prepare_mindspore()
    import mindspore as ms

    from ..export.formats import format_module
    from ..export.pipeline import ExportRequest, export_checkpoint
    from ..train.checkpoint import resolve_checkpoint_path, save_checkpoint
    from ..train.model import build_unet

    if checkpoint is None:
        ms.set_seed(0)
        config = Config(model=ModelConfig(image_size=8, channels=1, dim=8, dim_mults=(1, 2))) if tiny else Config()
        checkpoint = save_checkpoint(Path(work) / "untrained.ckpt", config, step=0, net=build_unet(config.model))
    result: Dict[str, Any] = {"checkpoint": str(resolve_checkpoint_path(checkpoint)), "artifacts": [], "errors": {}}
    for fmt in formats:
        for graph, optimize in ({"optimized": True, "plain": False} if fmt == "onnx" else {None: True}).items():
            out = Path(work) / f"unet{'-' + graph if graph else ''}{format_module(fmt).SUFFIX}"
            try:
                export_checkpoint(Path(result["checkpoint"]), ExportRequest(fmt, out, gate=None, optimize=optimize),
                                  log=lambda line: print(line, file=sys.stderr))
                result["artifacts"].append({"format": fmt, "graph": graph, "path": str(out)})
            except Exception as exc:  # a format that cannot be made here is reported, not fatal
                result["errors"][f"export {fmt}"] = f"{type(exc).__name__}: {first_line(exc)}"
    return result


if __name__ == "__main__":
    run_main(lambda: reply(prepare(**json.loads(sys.argv[1]))))
