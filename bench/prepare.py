"""Make the models a benchmark runs: a checkpoint (given, or an untrained one built here) exported to
ONNX, MindIR and MindSpore Lite. Imports MindSpore, so the orchestrator runs it as a child process:

    python -m bench.prepare WORKDIR [--checkpoint CKPT] [--tiny]

Prints one JSON line (bench.worker.REPLY_PREFIX) with the paths; an export that fails (e.g. no Lite
bridge built) is reported with its error and the others still made. The numeric gate is skipped:
latency does not depend on it, and `cli.py export` / `verify` are where artifacts get verified.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from ..runtime.config import Config, DiffusionConfig, ModelConfig, TrainConfig

from .worker import REPLY_PREFIX

FORMATS = {"onnx": "unet.onnx", "mindir": "unet.mindir", "mslite": "unet.lite.mindir"}


def tiny_bench_config() -> Config:
    """An 8x8 U-Net of a few thousand parameters with the tutorial's T=200, for `bench --quick` in CI."""
    return Config(model=ModelConfig(image_size=8, channels=1, dim=8, dim_mults=(1, 2)),
                  diffusion=DiffusionConfig(), train=TrainConfig())


def prepare(work: Path, checkpoint: Path | None, tiny: bool, formats: List[str]) -> Dict[str, Any]:
    import mindspore as ms

    from ..export.pipeline import ExportRequest, export_checkpoint
    from ..train.checkpoint import resolve_checkpoint_path, save_checkpoint
    from ..train.model import build_unet

    work.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        ms.set_seed(0)
        config = tiny_bench_config() if tiny else Config()
        checkpoint = save_checkpoint(work / "untrained.ckpt", config, step=0, net=build_unet(config.model))
    result: Dict[str, Any] = {"checkpoint": str(resolve_checkpoint_path(checkpoint)), "artifacts": {}, "errors": {}}
    for name in formats:
        out = work / FORMATS[name]
        for stale in (out, out.with_name(out.name + ".json")):
            stale.unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            export_checkpoint(Path(result["checkpoint"]), ExportRequest(format=name, out=out, gate=None),
                              log=lambda line: print(line, file=sys.stderr))
            result["artifacts"][name] = str(out)
        except Exception as exc:  # a format that cannot be made here is reported, not fatal
            result["errors"][name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        result.setdefault("export_s", {})[name] = round(time.perf_counter() - started, 2)
    return result


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prepare")
    parser.add_argument("work", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args(argv)
    result = prepare(args.work, args.checkpoint, args.tiny, [f for f in args.formats.split(",") if f])
    sys.stdout.write(REPLY_PREFIX + json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
