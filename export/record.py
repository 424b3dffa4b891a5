"""What an export is asked for and what it records: the request, the manifest of the artifact, and the manifest's
verification entry (the gate's report, or the loud mark of a skipped gate). The U-Net export (export/pipeline.py)
and the sampler-step export (export/sampler_export.py) both build their manifests here."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Optional

from ..runtime.errors import VerificationFailed
from ..runtime.files import sha256_file
from ..runtime.manifest import Manifest, SamplerSettings, TensorSpec
from ..runtime.schedules import ScheduleTables
from ..train.checkpoint import Checkpoint

from .formats import BATCH_AXIS, INPUT_NAMES, OUTPUT_NAME, Exported
from .gate import DEFAULT_SEED, GateReport, Thresholds, format_report

Log = Callable[[str], None]
PACKAGE = "ms-ddpm"
SKIPPED_WARNING = "export NOT verified (--no-verify): nothing shows that this artifact computes what the checkpoint computes"


@dataclass(frozen=True)
class GateSettings:
    atol: Optional[float] = None  # None: the format's default (its module's THRESHOLDS, else Thresholds())
    min_cosine: Optional[float] = None
    seed: int = DEFAULT_SEED

    def thresholds_for(self, module: ModuleType) -> Thresholds:
        return self.over(getattr(module, "THRESHOLDS", Thresholds()))

    def over(self, default: Thresholds) -> Thresholds:
        """The given thresholds, `default`'s where none was given."""
        return Thresholds(default.atol if self.atol is None else self.atol,
                          default.min_cosine if self.min_cosine is None else self.min_cosine).validate()


@dataclass(frozen=True)
class ExportRequest:
    format: str
    out: Optional[Path] = None  # default: export.pipeline.default_output()
    batch: Optional[int] = None  # None: any batch size (symbolic batch axis)
    opset: Optional[int] = None  # ONNX only; None: the exporter's own
    gate: Optional[GateSettings] = GateSettings()  # None: skip the numeric gate
    optimize: bool = True  # formats built on the ONNX graph: export it optimised (export.onnx_optimize)
    sampler: Optional[SamplerSettings] = None  # a sampler-step artifact (export/sampler_export.py) instead of the U-Net


def build_manifest(request: ExportRequest, artifact_name: str, artifact_sha256: str, exported: Exported,
                   source: Checkpoint, verification: Dict[str, Any]) -> Manifest:
    """The manifest of one export: enough to sample from the artifact with no MindSpore and no checkpoint."""
    config = source.config
    batch_dim = BATCH_AXIS if request.batch is None else request.batch
    image = [config.model.channels, config.model.image_size, config.model.image_size]
    return Manifest(
        format=request.format,
        artifact=artifact_name,
        artifact_sha256=artifact_sha256,
        config=config.to_dict(),
        betas=ScheduleTables.from_name(config.diffusion.schedule, config.diffusion.timesteps).betas.tolist(),
        inputs=[TensorSpec(INPUT_NAMES[0], "float32", [batch_dim, *image]), TensorSpec(INPUT_NAMES[1], "int32", [batch_dim])],
        outputs=[TensorSpec(OUTPUT_NAME, "float32", [batch_dim, *image])],
        batch={"policy": "dynamic"} if request.batch is None else {"policy": "fixed", "size": request.batch},
        opset=exported.opset,
        source_checkpoint_sha256=sha256_file(source.path),
        package_version=package_version(),
        verification=verification,
        extra=exported.notes,
    )


def verification_record(request: ExportRequest, log: Log, gate: Callable[[], GateReport]) -> Dict[str, Any]:
    """The manifest's verification entry from `gate()`; raises VerificationFailed when the gate fails."""
    if request.gate is None:
        log(f"WARNING: {SKIPPED_WARNING}")
        return {"skipped": True, "warning": SKIPPED_WARNING}
    report = gate()
    log(format_report(report))
    if not report.passed:
        raise VerificationFailed("the export failed the numeric gate; no artifact was written")
    return report.to_dict()


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return f"unknown ({PACKAGE} not installed)"
