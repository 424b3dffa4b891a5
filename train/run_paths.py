"""Where a run keeps its checkpoint, found without MindSpore so that a wrong path fails in milliseconds."""
from __future__ import annotations

from pathlib import Path

from ..runtime.errors import ToolkitError

LATEST = "latest.ckpt"


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a .ckpt file or a run/checkpoint directory (which means its latest.ckpt)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / LATEST, path / "checkpoints" / LATEST):
            if candidate.is_file():
                return candidate
        raise ToolkitError(f"no {LATEST} in checkpoint directory: {path}")
    if not path.is_file():
        raise ToolkitError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ToolkitError(f"checkpoint is an empty file: {path}")
    return path
