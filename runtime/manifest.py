"""The manifest: everything a consumer needs to sample from an exported U-Net, with no MindSpore
and no checkpoint. Stored as JSON beside the artifact (`unet.onnx` -> `unet.onnx.json`).

It is plain JSON, validated field by field (the runtime never unpickles anything).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .config import Config
from .errors import ToolkitError
from .files import write_text_atomic
from .schedules import ScheduleTables

FORMAT_VERSION = 1
FORMATS = ("onnx", "mindir", "mslite")


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int32"
    shape: List[Any]  # ints, or a string for a symbolic axis ("batch")


@dataclass
class Manifest:
    format: str  # one of FORMATS
    artifact: str  # file name of the model, relative to the manifest's directory
    artifact_sha256: str
    config: Dict[str, Any]  # Config.to_dict()
    betas: List[float]  # the full beta schedule, len == T
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    batch: Dict[str, Any]  # {"policy": "dynamic"} or {"policy": "fixed", "size": N}
    opset: Optional[int]
    source_checkpoint_sha256: str
    package_version: str
    verification: Dict[str, Any]  # the gate's report, or {"skipped": True, "warning": ...}
    format_version: int = FORMAT_VERSION
    extra: Dict[str, Any] = field(default_factory=dict)  # format-specific notes (e.g. how Lite was reached)

    # ---- derived views -------------------------------------------------------------------------
    @property
    def run_config(self) -> Config:
        return Config.from_dict(self.config)

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    @property
    def image_size(self) -> int:
        return self.run_config.model.image_size

    @property
    def channels(self) -> int:
        return self.run_config.model.channels

    @property
    def fixed_batch(self) -> Optional[int]:
        return int(self.batch["size"]) if self.batch.get("policy") == "fixed" else None

    def tables(self) -> ScheduleTables:
        return ScheduleTables.from_betas(np.asarray(self.betas, dtype=np.float64))

    # ---- I/O -----------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: Path) -> Path:
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> "Manifest":
        if not isinstance(data, dict):
            raise ToolkitError(f"{source}: manifest must be a JSON object")
        required = {"format", "artifact", "artifact_sha256", "config", "betas", "inputs", "outputs", "batch",
                    "opset", "source_checkpoint_sha256", "package_version", "verification", "format_version"}
        missing = sorted(required - set(data))
        if missing:
            raise ToolkitError(f"{source}: manifest is missing {', '.join(missing)}")
        unknown = sorted(set(data) - required - {"extra"})
        if unknown:
            raise ToolkitError(f"{source}: manifest has unknown field(s) {', '.join(unknown)}")
        if data["format_version"] != FORMAT_VERSION:
            raise ToolkitError(f"{source}: manifest format version {data['format_version']!r} is not supported "
                               f"(this runtime reads version {FORMAT_VERSION})")
        if data["format"] not in FORMATS:
            raise ToolkitError(f"{source}: unknown artifact format {data['format']!r}")
        try:
            manifest = cls(**{**data,
                              "inputs": [TensorSpec(**spec) for spec in data["inputs"]],
                              "outputs": [TensorSpec(**spec) for spec in data["outputs"]]})
        except TypeError as exc:
            raise ToolkitError(f"{source}: malformed manifest ({exc})") from None
        manifest._validate(source)
        return manifest

    def _validate(self, source: str) -> None:
        config = Config.from_dict(self.config)  # raises ToolkitError on a bad config
        if not isinstance(self.betas, list) or not all(isinstance(b, (int, float)) for b in self.betas):
            raise ToolkitError(f"{source}: betas must be a list of numbers")
        self.tables()  # checks the betas' range
        if len(self.betas) != config.diffusion.timesteps:
            raise ToolkitError(f"{source}: {len(self.betas)} betas but config says T={config.diffusion.timesteps}")
        policy = self.batch.get("policy") if isinstance(self.batch, dict) else None
        if policy not in ("dynamic", "fixed") or (policy == "fixed" and not _positive_int(self.batch.get("size"))):
            raise ToolkitError(f"{source}: batch must be {{'policy': 'dynamic'}} or {{'policy': 'fixed', 'size': N}}")
        if len(self.inputs) != 2 or len(self.outputs) != 1:
            raise ToolkitError(f"{source}: expected inputs (x, t) and one output")
        expected = [config.model.channels, config.model.image_size, config.model.image_size]
        if list(self.inputs[0].shape[1:]) != expected or list(self.outputs[0].shape[1:]) != expected:
            raise ToolkitError(f"{source}: input/output shapes {self.inputs[0].shape} do not match the config "
                               f"(channels={expected[0]}, image size={expected[1]})")

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ToolkitError(f"manifest not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ToolkitError(f"cannot read manifest {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ToolkitError(f"manifest is not valid JSON: {path} ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, source=str(path))


def manifest_path_for(artifact: str | Path) -> Path:
    """`unet.onnx` -> `unet.onnx.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
