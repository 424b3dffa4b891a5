"""The manifest: everything a consumer needs to sample from an exported U-Net, with no MindSpore
and no checkpoint. Stored as JSON beside the artifact (`unet.onnx` -> `unet.onnx.json`).

It is plain JSON, validated field by field (the runtime never unpickles anything).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .config import Config, parse_json
from .errors import ToolkitError
from .files import write_text_atomic
from .schedules import ScheduleTables, beta_schedule

FORMAT_VERSION = 1
FORMATS = ("onnx", "mindir", "mslite")
TENSOR_DTYPES = ("float32", "float16", "float64", "int32", "int64")
# The schema: each field's JSON type(s); each field's own rules are in from_dict, _tensor_spec and _validate.
FIELD_TYPES: Dict[str, Tuple[type, ...]] = {
    "format": (str,), "artifact": (str,), "artifact_sha256": (str,), "config": (dict,), "betas": (list,),
    "inputs": (list,), "outputs": (list,), "batch": (dict,), "opset": (int, type(None)),
    "source_checkpoint_sha256": (str,), "package_version": (str,), "verification": (dict,), "format_version": (int,),
    "extra": (dict,),
}
OPTIONAL_FIELDS = {"extra"}
_JSON_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer", type(None): "null"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


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

    def describe(self) -> List[str]:
        """The manifest in words, one fact a line (`ms-ddpm info`)."""
        config = self.run_config
        batch = "dynamic (any batch size)" if self.fixed_batch is None else f"fixed at {self.fixed_batch} (larger runs are chunked)"
        return [
            f"artifact: {self.artifact} ({self.format}), sha256 {self.artifact_sha256}",
            "model: " + ", ".join(f"{key} {value}" for key, value in asdict(config.model).items()),
            f"diffusion: {config.diffusion.schedule} schedule, T = {self.timesteps}, trained with {config.diffusion.loss} loss",
            f"inputs: {_tensors_in_words(self.inputs)}",
            f"outputs: {_tensors_in_words(self.outputs)}",
            f"batch: {batch}",
            f"opset: {self.opset if self.opset is not None else 'n/a'}",
            f"gate: {_gate_in_words(self.verification)}",
            f"source checkpoint sha256: {self.source_checkpoint_sha256}",
            f"written by: ms-ddpm {self.package_version} (manifest format {self.format_version})",
        ] + [f"{key}: {_in_words(value)}" for key, value in self.extra.items()]

    # ---- I/O -----------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: Path) -> Path:
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> "Manifest":
        """Check `data` against the schema (FIELD_TYPES, then each field's own rules); build the manifest."""
        if not isinstance(data, dict):
            raise ToolkitError(f"{source}: manifest must be a JSON object")
        missing = sorted(set(FIELD_TYPES) - OPTIONAL_FIELDS - set(data))
        if missing:
            raise ToolkitError(f"{source}: manifest is missing {', '.join(missing)}")
        unknown = sorted(set(data) - set(FIELD_TYPES))
        if unknown:
            raise ToolkitError(f"{source}: manifest has unknown field(s) {', '.join(map(repr, unknown))}")
        for name, value in data.items():
            _expect(value, FIELD_TYPES[name], f"{source}: manifest field {name!r}")
        if data["format_version"] != FORMAT_VERSION:
            raise ToolkitError(f"{source}: manifest format version {data['format_version']!r} is not supported "
                               f"(this runtime reads version {FORMAT_VERSION})")
        if data["format"] not in FORMATS:
            raise ToolkitError(f"{source}: unknown artifact format {data['format']!r}")
        manifest = cls(**{**data, "inputs": [_tensor_spec(spec, f"{source}: inputs") for spec in data["inputs"]],
                          "outputs": [_tensor_spec(spec, f"{source}: outputs") for spec in data["outputs"]]})
        manifest._validate(source)
        return manifest

    def _validate(self, source: str) -> None:
        """The rules that tie fields together: config, schedule, batch policy and tensor shapes."""
        config = Config.from_dict(self.config)  # raises ToolkitError on a bad config
        if Path(self.artifact).name != self.artifact or self.artifact in ("", ".", ".."):
            raise ToolkitError(f"{source}: artifact must be a file name beside the manifest, got {self.artifact!r}")
        for name in ("artifact_sha256", "source_checkpoint_sha256"):
            if not _SHA256.fullmatch(getattr(self, name)):
                raise ToolkitError(f"{source}: {name} must be 64 lowercase hex digits")
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in self.betas):
            raise ToolkitError(f"{source}: betas must be numbers in (0, 1)")
        diffusion = config.diffusion
        if len(self.betas) != diffusion.timesteps:
            raise ToolkitError(f"{source}: {len(self.betas)} betas but config says T={diffusion.timesteps}")
        if not np.allclose(self.betas, beta_schedule(diffusion.schedule, diffusion.timesteps), rtol=1e-9, atol=0):
            raise ToolkitError(f"{source}: betas are not the {diffusion.schedule} schedule of the config (T={diffusion.timesteps})")
        policy = self.batch.get("policy")
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
        return cls.from_dict(parse_json(text, f"manifest {path}"), source=str(path))


def manifest_path_for(artifact: str | Path) -> Path:
    """`unet.onnx` -> `unet.onnx.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def _gate_in_words(verification: Dict[str, Any]) -> str:
    """The numeric gate's verdict and worst case, from the manifest's verification entry."""
    if verification.get("skipped"):
        return f"NOT VERIFIED ({verification.get('warning', 'exported with --no-verify')})"
    verdict = "PASS" if verification.get("passed") else "FAIL"
    return (f"{verdict}: worst max abs {_in_words(verification.get('worst_max_abs'))} (<= {_in_words(verification.get('atol'))}), "
            f"worst cosine {_in_words(verification.get('worst_cosine'))} (>= {_in_words(verification.get('min_cosine'))}), "
            f"{len(verification.get('cases', []))} cases, loaded by {verification.get('loader', '?')}")


def _tensors_in_words(specs: List[TensorSpec]) -> str:
    return "; ".join(f"{spec.name} {spec.dtype} {spec.shape}" for spec in specs)


def _in_words(value: Any) -> str:
    """A JSON value for one line: floats short, objects as key=value pairs."""
    if isinstance(value, float):
        return f"{value:.8g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}={_in_words(item)}" for key, item in value.items())
    return "?" if value is None else str(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _expect(value: Any, kinds: Tuple[type, ...], where: str) -> None:
    """A JSON value of one of `kinds` (true/false never count as numbers)."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(_JSON_NAMES[kind] for kind in kinds)
        raise ToolkitError(f"{where} must be {names}, got {json.dumps(value)[:40]}")


def _tensor_spec(value: Any, where: str) -> TensorSpec:
    """One {"name", "dtype", "shape"} entry: a name, a known dtype, and axes that are sizes or symbolic names."""
    if not isinstance(value, dict) or set(value) != {"name", "dtype", "shape"}:
        raise ToolkitError(f"{where} must be objects with exactly name, dtype and shape, got {json.dumps(value)[:40]}")
    _expect(value["name"], (str,), f"{where}: name")
    if value["dtype"] not in TENSOR_DTYPES:
        raise ToolkitError(f"{where}: dtype must be one of {', '.join(TENSOR_DTYPES)}, got {json.dumps(value['dtype'])[:40]}")
    _expect(value["shape"], (list,), f"{where}: shape")
    if not all(_positive_int(axis) or (isinstance(axis, str) and axis) for axis in value["shape"]):
        raise ToolkitError(f"{where}: shape axes must be positive sizes or names, got {json.dumps(value['shape'])[:40]}")
    return TensorSpec(**value)
