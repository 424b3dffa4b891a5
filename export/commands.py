"""CLI commands `export` and `verify`. The CLI (cli.py) imports this module at start-up: no MindSpore here
(export.pipeline, which loads it, is imported inside the commands after the cheap checks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..runtime.backends import backend_for_format, check_backend
from ..runtime.commands import check_artifact_path
from ..runtime.equivalence import PRECISION_PSNR_MIN_DB, check_precision
from ..runtime.errors import ToolkitError, VerificationFailed
from ..runtime.files import check_output_dir
from ..runtime.manifest import Manifest, SamplerSettings, manifest_path_for
from ..runtime.schedulers import DEFAULT_SPACING, SCHEDULERS, SPACINGS
from ..train import require_extra
from ..train.run_paths import resolve_checkpoint_path

from .formats import FORMATS, check_format
from .gate import DEFAULT_ATOL, DEFAULT_MIN_COSINE, DEFAULT_SEED, MSLITE_THRESHOLDS, Thresholds, format_report

_ATOL = typer.Option(None, help=f"Gate: largest allowed |artifact - MindSpore| (default {DEFAULT_ATOL:g}; mslite "
                                f"{MSLITE_THRESHOLDS.atol:g}).")
_MIN_COSINE = typer.Option(None, help=f"Gate: smallest allowed cosine similarity per case (default {DEFAULT_MIN_COSINE:g}; "
                                      f"mslite {MSLITE_THRESHOLDS.min_cosine:g}).")
_SEED = typer.Option(DEFAULT_SEED, help="Gate: seed of the random inputs (x ~ N(0,1), t spanning 0..T-1).")
STEP_FORMATS = ("onnx", "mslite")  # the formats a sampler-step artifact is written in
_CHECKPOINT = typer.Option(..., help="A .ckpt file, or a run directory (its checkpoints/latest.ckpt).")


def export(
    checkpoint: Path = _CHECKPOINT,
    fmt: str = typer.Option(..., "--format", help=f"Artifact format: {' | '.join(FORMATS)}."),
    out: Optional[Path] = typer.Option(None, help="Artifact path (its directory must exist). Default: RUN/export/unet.onnx, "
                                                  "unet.mindir or unet.lite.mindir, RUN being the checkpoint's run directory. The manifest "
                                                  "is written beside it as <artifact>.json."),
    batch: str = typer.Option("dynamic", help="'dynamic' (any batch size) or a fixed batch size N, recorded in the manifest."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default: the exporter's, 11; others via onnx.version_converter)."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="onnx, mslite: rewrite the graph for speed "
                                  "(opset 20, fused LayerNormalization; Gelu for onnx; checked against the plain graph). "
                                  "--no-optimize keeps the exporter's graph."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run the numeric gate (default). --no-verify marks the "
                                                                   "manifest as unverified."),
    atol: float = _ATOL,
    min_cosine: float = _MIN_COSINE,
    seed: int = _SEED,
    sampler: Optional[str] = typer.Option(None, help=f"Write a sampler-step artifact instead: the U-Net and one step of this "
                                                     f"scheduler in one model ({' | '.join(SCHEDULERS)}; onnx or mslite; "
                                                     "default name unet.sampler.onnx / unet.sampler.lite.mindir)."),
    steps: Optional[int] = typer.Option(None, help="--sampler: its steps (default T for ddpm, 50 for ddim, 20 for the DPM-Solvers)."),
    eta: Optional[float] = typer.Option(None, help="--sampler ddim: eta (default 0)."),
    spacing: Optional[str] = typer.Option(None, help=f"--sampler: timestep spacing, {' | '.join(SPACINGS)} (default {DEFAULT_SPACING})."),
    clip_x0: bool = typer.Option(False, "--clip-x0", help="--sampler: clip each predicted x0 to [-1, 1]."),
) -> None:
    """Export the U-Net eps(x_t, t) to ONNX, MindIR or MindSpore Lite, prove it matches MindSpore, write artifact + manifest.

    With --sampler, the artifact is the U-Net and one scheduler step, (x, i, z, state) -> (x_next, x0, state_next); its gate runs whole trajectories against the runtime's loop on the MindSpore model (final max abs <= 1e-4; Lite 2e-3) and, for DDPM at all T steps, the end-to-end check.

    The numeric gate reloads the artifact as a consumer would (onnxruntime; mindspore.load + GraphCell; the Lite runtime in a child process), compares it with the checkpoint's model on random inputs at batch sizes 1, 5, 16, 64 (or the fixed batch), and fails the export (exit 1, nothing written) unless every case meets --atol and --min-cosine.
    """
    require_extra("export", "mindspore", "onnx")
    fmt, batch_size = check_format(fmt), parse_batch(batch)
    step = sampler_settings(fmt, sampler, steps, eta, spacing, clip_x0)
    resolve_checkpoint_path(checkpoint)
    _check_thresholds(atol, min_cosine)
    if not verify and (atol, min_cosine) != (None, None):
        raise ToolkitError("--atol and --min-cosine are thresholds of the numeric gate, which --no-verify skips")
    if out is not None:
        check_output_dir(out)
    from .pipeline import ExportRequest, GateSettings, export_checkpoint

    request = ExportRequest(format=fmt, out=out, batch=batch_size, opset=opset, optimize=optimize,
                            gate=GateSettings(atol, min_cosine, seed) if verify else None,
                            sampler=step)
    export_checkpoint(checkpoint, request, log=_log)


def verify(
    artifact: Path = typer.Argument(..., help="An exported artifact; its manifest <artifact>.json must be beside it."),
    checkpoint: Path = _CHECKPOINT,
    atol: float = _ATOL,
    min_cosine: float = _MIN_COSINE,
    seed: int = _SEED,
    end_to_end: bool = typer.Option(False, "--end-to-end", help="Also run whole DDPM samples on the runtime and the "
                                    "MindSpore reference from the same noise (gate: PSNR >= 40 dB, max abs <= 1e-3)."),
    backend: Optional[str] = typer.Option(None, help="Run the artifact on this runtime backend (e.g. openvino), in fp32, "
                                                     "for the gates (default: the format's loader)."),
    precision: Optional[str] = typer.Option(None, help="Also sample 16 images in this precision and in fp32 on the "
                                                       "backend from the same noise (the gates run in fp32): "
                                                       + ", ".join(f"{name} needs PSNR >= {bound:g} dB"
                                                                   for name, bound in PRECISION_PSNR_MIN_DB.items()) + "."),
) -> None:
    """Re-run the numeric gate on an artifact against a checkpoint; print the table; exit 1 if it fails."""
    require_extra("export", "mindspore", "onnx")
    _check_thresholds(atol, min_cosine)
    check_artifact_path(artifact)
    resolve_checkpoint_path(checkpoint)
    reduced = precision not in (None, "fp32")
    if backend is not None or reduced:
        manifest = Manifest.load(manifest_path_for(artifact))
        backend = backend or backend_for_format(manifest.format)
        check_backend(backend, artifact, manifest, precision)
    from .pipeline import GateSettings, verify_artifact

    report = verify_artifact(artifact, checkpoint, GateSettings(atol, min_cosine, seed), log=_log, backend=backend)
    typer.echo(format_report(report))
    if not report.passed:
        raise VerificationFailed(f"{artifact} does not compute what {checkpoint} computes (see the table above)")
    if end_to_end:
        from .end_to_end import check_end_to_end

        check_end_to_end(artifact, checkpoint, seed=seed, backend=backend, log=typer.echo)
    if reduced:
        check_precision(artifact, backend, precision, seed=seed, log=typer.echo)


def sampler_settings(fmt: str, name: Optional[str], steps: Optional[int], eta: Optional[float], spacing: Optional[str],
                     clip_x0: bool) -> Optional[SamplerSettings]:
    """The --sampler options, checked before any slow work (steps <= T once the checkpoint is loaded)."""
    given = [flag for flag, value in (("--steps", steps), ("--eta", eta), ("--spacing", spacing), ("--clip-x0", clip_x0 or None))
             if value is not None]
    if name is None:
        if given:
            raise ToolkitError(f"{', '.join(given)}: sampler options, for --sampler only")
        return None
    if fmt not in STEP_FORMATS:
        raise ToolkitError(f"--sampler writes an onnx or mslite artifact, not {fmt}")
    if name not in SCHEDULERS:
        raise ToolkitError(f"unknown sampler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if eta is not None and name != "ddim":
        raise ToolkitError(f"--eta applies to --sampler ddim only, not {name}")
    if (eta or 0) < 0 or (steps is not None and steps < 1) or (spacing or DEFAULT_SPACING) not in SPACINGS:
        raise ToolkitError(f"--sampler needs --steps >= 1, --eta >= 0 and --spacing one of {', '.join(SPACINGS)}")
    return SamplerSettings(name, steps, eta or 0.0, spacing or DEFAULT_SPACING, clip_x0)


def _check_thresholds(atol: Optional[float], min_cosine: Optional[float]) -> None:
    """Refuse nonsense thresholds before any slow work (None means the format's default)."""
    Thresholds(DEFAULT_ATOL if atol is None else atol, DEFAULT_MIN_COSINE if min_cosine is None else min_cosine).validate()


def parse_batch(text: str) -> Optional[int]:
    """'dynamic' -> None; 'N' -> N >= 1."""
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ToolkitError(f"--batch must be 'dynamic' or a positive integer, got {text!r}")
    return int(text)


def _log(message: str) -> None:
    typer.echo(message, err=True)
