"""Make the models a bench run times: a checkpoint (given, or an untrained one built here) exported to
the formats asked for. Imports MindSpore, so the bench runs it as a child process:

    python -m ms_ddpm.bench.prepare WORK FORMATS [--checkpoint CKPT] [--tiny]

Replies with the checkpoint and a list of artifacts ({format, graph, path}); an export that fails
(e.g. no Lite bridge built) is reported with its error, the others are still made. The ONNX comes
twice: the optimised graph (the export's default) and the plain one (`--no-optimize`). The numeric
gate is skipped: latency does not depend on it (`cli.py verify` does).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..runtime.config import Config, ModelConfig
from ..runtime.errors import first_line, run_main

from .harness import reply

GRAPHS = {"onnx": {"optimized": {"optimize": True}, "plain": {"optimize": False}}}  # format -> graph -> options


def tiny_bench_config() -> Config:
    """An 8x8 U-Net of a few thousand parameters with the tutorial's T=200, for `bench --quick`."""
    return Config(model=ModelConfig(image_size=8, channels=1, dim=8, dim_mults=(1, 2)))


def prepare(work: Path, formats: List[str], checkpoint: Optional[Path], tiny: bool) -> Dict[str, Any]:
    from ..train import prepare_mindspore

    prepare_mindspore()
    import mindspore as ms

    from ..export.formats import format_module
    from ..export.pipeline import ExportRequest, export_checkpoint
    from ..train.checkpoint import resolve_checkpoint_path, save_checkpoint
    from ..train.model import build_unet

    if checkpoint is None:
        ms.set_seed(0)
        config = tiny_bench_config() if tiny else Config()
        checkpoint = save_checkpoint(work / "untrained.ckpt", config, step=0, net=build_unet(config.model))
    result: Dict[str, Any] = {"checkpoint": str(resolve_checkpoint_path(checkpoint)), "artifacts": [], "errors": {}}
    for fmt in formats:
        for graph, options in GRAPHS.get(fmt, {None: {}}).items():
            out = work / f"unet{'-' + graph if graph else ''}{format_module(fmt).SUFFIX}"
            try:
                export_checkpoint(Path(result["checkpoint"]), ExportRequest(format=fmt, out=out, gate=None, **options),
                                  log=lambda line: print(line, file=sys.stderr))
                result["artifacts"].append({"format": fmt, "graph": graph, "path": str(out)})
            except Exception as exc:  # a format that cannot be made here is reported, not fatal
                result["errors"][f"export {fmt}"] = f"{type(exc).__name__}: {first_line(exc)}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ms_ddpm.bench.prepare")
    parser.add_argument("work", type=Path)
    parser.add_argument("formats")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    reply(prepare(args.work, args.formats.split(","), args.checkpoint, args.tiny))


if __name__ == "__main__":
    run_main(main)
