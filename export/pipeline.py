"""Export a checkpoint to an artifact + manifest behind the numeric gate, and re-verify an artifact later.

Imports MindSpore (through train.checkpoint): only the `export` and `verify` commands load this module.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

from ..train import prepare_mindspore
prepare_mindspore()  # before MindSpore loads: oneDNN ISA cap, quiet logs
from mindspore import nn

from ..runtime.backends import import_library, open_backend
from ..runtime.config import Config, ModelConfig
from ..runtime.errors import ToolkitError, first_line
from ..runtime.files import atomic_path, check_output_dir, sha256_file
from ..runtime.manifest import Manifest, manifest_path_for
from ..train.checkpoint import Checkpoint, load_model
from ..train.model import use_exportable_norms

from .formats import Exported, format_module
from .gate import EpsFn, GateReport, gate_batch_sizes, gate_cases, run_gate
from .record import ExportRequest, GateSettings, Log, build_manifest, verification_record
from .sampler_export import STEP_THRESHOLDS, SUFFIX as STEP_SUFFIX, export_step, run_step_gate
from .source import source_eps


def export_checkpoint(checkpoint: Path, request: ExportRequest, log: Log) -> Path:
    """Export, verify, then move the artifact and its manifest into place; on any failure, write nothing."""
    started = time.perf_counter()
    module = format_module(request.format)
    if request.gate is not None:
        request.gate.thresholds_for(module)  # bad thresholds fail before the slow work
    options = _export_options(module, request)
    net, source = _load_source(checkpoint, log)
    out = check_output_dir(request.out or default_output(source.path, (request.sampler and STEP_SUFFIX or "") + module.SUFFIX))
    check_output_dir(manifest_path_for(out))
    with tempfile.TemporaryDirectory(prefix="ms-ddpm-export.") as scratch:
        # MindSpore's exporters accept only [0-9a-zA-Z@_-.:/] in a path: export to a plain name first.
        artifact = Path(scratch) / f"unet{module.SUFFIX}"
        if request.sampler is None:
            exported = _export(module, net, source.config.model, artifact, request, options, log)
            verification = verification_record(request, log, lambda: _run_gate(module, _load_eps(module, artifact), net,
                                                                        source.config, request.batch, request.gate,
                                                                        log))
            manifest = build_manifest(request, out.name, sha256_file(artifact), exported, source, verification)
        else:
            manifest = export_step(net, source, artifact, out.name, request, log)
        _install(artifact, manifest, out)
    log(f"wrote {out} and {manifest_path_for(out).name} ({time.perf_counter() - started:.1f} s in all)")
    return out


def verify_artifact(artifact: Path, checkpoint: Path, settings: GateSettings, log: Log,
                    backend: Optional[str] = None) -> GateReport:
    """Load the artifact as a consumer would (the format's loader, or the runtime's `backend` in fp32) and run the
    numeric gate against the checkpoint's model."""
    if not artifact.is_file():
        raise ToolkitError(f"artifact not found: {artifact}")
    manifest = Manifest.load(manifest_path_for(artifact))
    module = format_module(manifest.format)
    settings.thresholds_for(module)
    loaded = None if manifest.sampler else _load_eps(module, artifact, manifest, backend)
    net, source = _load_source(checkpoint, log)
    _check_manifest_matches(manifest, source.config)
    if loaded is not None:
        report = _run_gate(module, loaded, net, source.config, manifest.fixed_batch, settings, log)
    else:
        report = run_step_gate(artifact, manifest, net, source, settings.over(STEP_THRESHOLDS[manifest.format]),
                               settings.seed, log, backend)
    if sha256_file(artifact) != manifest.artifact_sha256:
        report.notes.append("the artifact's sha256 differs from its manifest's (the file changed after export)")
    if sha256_file(source.path) != manifest.source_checkpoint_sha256:
        report.notes.append("this checkpoint is not the file the artifact was exported from")
    return report


def default_output(checkpoint: Path, suffix: str) -> Path:
    """RUN/export/unet<suffix>, RUN being the run directory that holds checkpoints/ (created if needed)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    export_dir = run_dir / "export"
    if not export_dir.is_dir():
        check_output_dir(export_dir).mkdir()
    return export_dir / f"unet{suffix}"


def _load_source(checkpoint: Path, log: Log) -> tuple[nn.Cell, Checkpoint]:
    net, source = load_model(checkpoint)
    use_exportable_norms(net)  # the exporters' spelling of GroupNorm: the same function
    log(f"loaded {source.path} (step {source.step})")
    return net, source


def _export_options(module: ModuleType, request: ExportRequest) -> Dict[str, Any]:
    """The keyword options of the format's `export`: `optimize` for the formats that declare OPTIMIZES."""
    if getattr(module, "OPTIMIZES", False):
        return {"optimize": request.optimize}
    if not request.optimize:
        raise ToolkitError(f"--no-optimize applies to the formats built on the ONNX graph, not {request.format}")
    return {}


def _export(module: ModuleType, net: nn.Cell, model: ModelConfig, path: Path, request: ExportRequest,
            options: Dict[str, Any], log: Log) -> Exported:
    log(f"exporting {request.format} (batch {request.batch or 'dynamic'}"
        f"{', optimised' if options.get('optimize') else ''}) ...")
    started = time.perf_counter()
    try:
        exported = module.export(net, model, path, request.batch, request.opset, **options)
    except (RuntimeError, ValueError) as exc:  # MindSpore's exporters raise these, with pages of text
        raise ToolkitError(f"MindSpore could not export to {request.format}: {first_line(exc)}") from exc
    log(f"exported in {time.perf_counter() - started:.1f} s")
    return exported


def _install(artifact: Path, manifest: Manifest, out: Path) -> None:
    """Copy the artifact to `out` and write its manifest beside it, each atomically.

    The manifest commits the pair: an old one is removed just before the new artifact is renamed into
    place, and the new one is written last. A crash at any point leaves the old pair, an artifact with no
    manifest (which every loader refuses), or the new pair; never a new artifact beside an old manifest.
    """
    manifest_path = manifest_path_for(out)
    with atomic_path(out) as tmp_artifact:
        shutil.copyfile(artifact, tmp_artifact)
        manifest_path.unlink(missing_ok=True)
    manifest.save(manifest_path)


def _load_eps(module: ModuleType, artifact: Path, manifest: Optional[Manifest] = None,
              backend: Optional[str] = None) -> Tuple[EpsFn, str]:
    """The artifact as `eps(x, t)` and the loader's name: the format's loader, or the runtime's `backend` (fp32;
    it needs the artifact's `manifest`)."""
    if backend is None:
        return module.load_eps(artifact), module.LOADER
    version = import_library(backend).__version__
    return open_backend(backend, artifact, manifest), f"{backend} {version} CPU, the runtime's backend"


def _run_gate(module: ModuleType, loaded: Tuple[EpsFn, str], net: nn.Cell, config: Config,
              fixed_batch: Optional[int], settings: GateSettings, log: Log) -> GateReport:
    """The numeric gate: the loaded artifact (`eps`, the loader's name) against the MindSpore net."""
    artifact_eps, loader = loaded
    batch_sizes = gate_batch_sizes(fixed_batch)
    log(f"verifying ({loader}) at batch sizes {', '.join(map(str, batch_sizes))} ...")
    cases = gate_cases(config, settings.seed, batch_sizes)
    return run_gate(artifact_eps, source_eps(net, config.model), cases, settings.thresholds_for(module),
                    settings.seed, loader)


def _check_manifest_matches(manifest: Manifest, config: Config) -> None:
    """The artifact's model and schedule must be the checkpoint's: the eps gate alone cannot see T or the
    schedule (the manifest's betas are checked against its own config when it loads). A mismatch means the
    wrong pair of files was given, so it is a ToolkitError (exit 2), not a failed gate."""
    differing = []
    for section in ("model", "diffusion"):
        mine, theirs = (dataclasses.asdict(getattr(c, section)) for c in (manifest.run_config, config))
        differing += [f"{section}.{key} ({mine[key]!r} vs {theirs[key]!r})" for key in mine if mine[key] != theirs[key]]
    if differing:
        raise ToolkitError(f"the artifact's manifest does not match the checkpoint: {', '.join(differing)}")
