"""The manifest: everything a consumer needs to sample from an exported U-Net, with no MindSpore
and no checkpoint. Stored as JSON beside the artifact (`unet.onnx` -> `unet.onnx.json`).

A sampler-step artifact (the U-Net and one scheduler step in one model, `export --sampler`) has inputs
(x, i, z, state), outputs (x_next, x0, state_next) and a `sampler` section: the scheduler it carries,
its timesteps and state shape, the noise generator and the host's loop in words (`HOST_LOOP`).

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
from .files import sha256_file, write_text_atomic
from .schedulers import DEFAULT_SPACING, Scheduler, make_scheduler
from .schedules import ScheduleTables, beta_schedule

FORMAT_VERSION = 1
FORMATS = ("onnx", "mindir", "mslite")
TENSOR_DTYPES = ("float32", "float16", "float64", "int32", "int64")
# The schema: each field's JSON type(s); each field's own rules are in from_dict, _tensor_spec and _validate.
FIELD_TYPES: Dict[str, Tuple[type, ...]] = {
    "format": (str,), "artifact": (str,), "artifact_sha256": (str,), "config": (dict,), "betas": (list,),
    "inputs": (list,), "outputs": (list,), "batch": (dict,), "opset": (int, type(None)),
    "source_checkpoint_sha256": (str,), "package_version": (str,), "verification": (dict,), "format_version": (int,),
    "extra": (dict,), "sampler": (dict,),
}
OPTIONAL_FIELDS = {"extra", "sampler"}
STEP_INPUTS, STEP_OUTPUTS = ("x", "i", "z", "state"), ("x_next", "x0", "state_next")
SAMPLER_FIELDS = ("name", "steps", "eta", "spacing", "clip_x0", "noise_steps", "history", "state_shape", "timesteps",
                  "noise", "host_loop")
SAMPLER_NOISE = "philox4x32-10 (docs/noise.md)"
HOST_LOOP = ("noise = the seed's normal stream (see `noise`); x = its first N*C*H*W values as (N, C, H, W); "
             "state = zeros(state_shape) with the batch axis N; for i = 0 .. steps-1: z = the stream's next N*C*H*W "
             "values if i < noise_steps, else zeros; x, x0, state = model(x=x, i=[i], z=z, state=state) (outputs "
             "x_next, x0, state_next; x0 is the step's prediction of the clean image, for previews); then "
             "images = uint8(clip((x + 1) * 127.5 + 0.5, 0, 255)), (N, C, H, W) -> (N, H, W, C)")
_JSON_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer", type(None): "null",
               float: "a number", bool: "true or false"}
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
    sampler: Optional[Dict[str, Any]] = None  # a sampler-step artifact's scheduler (SAMPLER_FIELDS); None: a U-Net

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

    @property
    def sampler_settings(self) -> Optional["SamplerSettings"]:
        """The scheduler a sampler-step artifact carries; None for a plain U-Net."""
        return None if self.sampler is None else _sampler_settings(self.sampler, "the manifest's sampler")

    @property
    def samples_reference_ddpm(self) -> bool:
        """Whether the artifact's default sampler is the tutorial's DDPM (all T steps, x0 unclipped): true for a
        U-Net (the runtime's default) and for a sampler-step model that carries exactly that."""
        carried = self.sampler
        return carried is None or (carried["name"] == "ddpm" and carried["steps"] == self.timesteps
                                   and not carried["clip_x0"])

    @property
    def batch_axes(self) -> Tuple[Tuple[Optional[int], ...], Tuple[int, ...]]:
        """The batch axis of each input and each output (None: none); a step model's state is (K, N, C, H, W)."""
        return ((0, 0), (0,)) if self.sampler is None else ((0, None, 0, 1), (0, 0, 1))

    def check_artifact(self, artifact: Path) -> Tuple[str, bool]:
        """`sha256: OK`, or `sha256: MISMATCH (...)` / `MISSING`, for the model file against artifact_sha256."""
        if not artifact.is_file():
            return f"sha256: MISSING (no file {artifact})", False
        actual = sha256_file(artifact)
        if actual == self.artifact_sha256:
            return "sha256: OK", True
        return f"sha256: MISMATCH (file {actual}, manifest {self.artifact_sha256})", False

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
        ] + [f"{key}: {_in_words(value)}" for key, value in {**self.extra, **self._sampler_in_brief()}.items()]

    def _sampler_in_brief(self) -> Dict[str, Any]:
        """A sampler-step artifact's scheduler without its long fields (timesteps, host loop), for `describe`."""
        if self.sampler is None:
            return {}
        return {"sampler": {key: value for key, value in self.sampler.items() if key not in ("timesteps", "host_loop")}}

    # ---- I/O -----------------------------------------------------------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        if data["sampler"] is None:
            del data["sampler"]  # U-Net manifests stay as they were
        return json.dumps(data, indent=2)

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
        if self.sampler is not None:
            self._validate_step(source)
        elif len(self.inputs) != 2 or len(self.outputs) != 1:
            raise ToolkitError(f"{source}: expected inputs (x, t) and one output")
        expected = [config.model.channels, config.model.image_size, config.model.image_size]
        if list(self.inputs[0].shape[1:]) != expected or list(self.outputs[0].shape[1:]) != expected:
            raise ToolkitError(f"{source}: input/output shapes {self.inputs[0].shape} do not match the config "
                               f"(channels={expected[0]}, image size={expected[1]})")

    def _validate_step(self, source: str) -> None:
        """A sampler-step model's tensors, and a `sampler` section that is exactly what its own settings give."""
        names = [spec.name for spec in self.inputs], [spec.name for spec in self.outputs]
        if names != (list(STEP_INPUTS), list(STEP_OUTPUTS)):
            raise ToolkitError(f"{source}: a sampler-step model has inputs ({', '.join(STEP_INPUTS)}) and outputs "
                               f"({', '.join(STEP_OUTPUTS)}), got ({', '.join(names[0])}) and ({', '.join(names[1])})")
        settings = _sampler_settings(self.sampler, f"{source}: sampler")
        try:
            expected = settings.section(self.tables(), self.inputs[0].shape)
        except ToolkitError as exc:
            raise ToolkitError(f"{source}: sampler: {exc}") from exc
        differing = [key for key in SAMPLER_FIELDS if self.sampler[key] != expected[key]]
        if differing:
            raise ToolkitError(f"{source}: sampler {', '.join(differing)} disagree with {settings.describe()} "
                               f"on this schedule")
        image, state = self.inputs[0].shape, expected["state_shape"]
        shapes = [spec.shape for spec in (*self.inputs, *self.outputs)]
        if shapes != [image, [1], image, state, image, image, state]:
            raise ToolkitError(f"{source}: sampler-step tensor shapes {shapes} must be x, [1], x, state_shape, x, x, "
                               f"state_shape with x {image} and state_shape {state}")

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ToolkitError(f"manifest not found: {path}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ToolkitError(f"cannot read manifest {path}: {exc}") from exc
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


@dataclass(frozen=True)
class SamplerSettings:
    """The scheduler a sampler-step artifact carries: `make_scheduler`'s arguments (steps None: its default)."""

    name: str
    steps: Optional[int] = None
    eta: float = 0.0
    spacing: str = DEFAULT_SPACING
    clip_x0: bool = False

    def scheduler(self, tables: ScheduleTables) -> Scheduler:
        return make_scheduler(self.name, tables, self.steps, eta=self.eta, spacing=self.spacing, clip_x0=self.clip_x0)

    def section(self, tables: ScheduleTables, x_shape: List[Any]) -> Dict[str, Any]:
        """The manifest's `sampler` section for a step model whose x has shape `x_shape` (N, C, H, W)."""
        table = self.scheduler(tables).table()
        return {"name": self.name, "steps": len(table.timesteps), "eta": float(self.eta), "spacing": self.spacing,
                "clip_x0": self.clip_x0, "noise_steps": table.noise_steps, "history": table.history,
                "state_shape": [max(table.history, 1), *x_shape], "timesteps": table.timesteps.tolist(),
                "noise": SAMPLER_NOISE, "host_loop": HOST_LOOP}

    def describe(self) -> str:
        steps = "default steps" if self.steps is None else f"{self.steps} steps"
        return (f"{self.name}, {steps}, eta {self.eta:g}, {self.spacing} spacing, "
                f"{'x0 clipped' if self.clip_x0 else 'x0 not clipped'}")


def _sampler_settings(section: Dict[str, Any], where: str) -> SamplerSettings:
    """The settings in a manifest's `sampler` section: exactly SAMPLER_FIELDS, the settings of the right types."""
    if sorted(section) != sorted(SAMPLER_FIELDS):
        raise ToolkitError(f"{where} must have exactly the fields {', '.join(SAMPLER_FIELDS)}")
    kinds = {"name": (str,), "steps": (int,), "eta": (int, float), "spacing": (str,), "clip_x0": (bool,)}
    for key, types in kinds.items():
        _expect(section[key], types, f"{where} {key}")
    return SamplerSettings(*(section[key] for key in kinds))


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
