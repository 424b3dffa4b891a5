"""Sampler-step artifacts (`export --sampler NAME`): the U-Net and one step of a scheduler in one model, and
their gate.

The exporter's ONNX of the U-Net goes through `sampler_step.build_step_model` with the scheduler's weight
table; `--format mslite` converts that step model with the Lite converter. The manifest gets the step
model's tensors and a `sampler` section (runtime/manifest.py: settings, timesteps, state shape, noise
generator, the host's loop in words).

The gate (a failure writes nothing): the artifact, loaded by the runtime as a consumer would (`Sampler.load`
in a child process, runtime/equivalence.py: Lite never shares a process with MindSpore), samples whole
trajectories from the portable noise of `seed` at batch sizes `GATE_BATCHES` (or its fixed batch); the
reference is the same runtime loop (`Sampler.denoise`) with the numpy scheduler around the checkpoint's
MindSpore U-Net, from the same x_T and z. The final x must agree within `STEP_THRESHOLDS`. With DDPM at all T
steps (unclipped), the end-to-end check against the MindSpore reference sampler follows (PSNR >= 40 dB).
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from mindspore import nn

from ..runtime.backends import Backend
from ..runtime.errors import ToolkitError, first_line
from ..runtime.files import sha256_file
from ..runtime.manifest import Manifest, TensorSpec, manifest_path_for
from ..runtime.mslite import convert_onnx
from ..runtime.pipeline import Sampler
from ..runtime.processes import run_module
from ..runtime.schedulers import StepTable
from ..runtime.schedules import ScheduleTables
from ..train.checkpoint import Checkpoint

from . import onnx_export
from .end_to_end import check_end_to_end
from .formats import Exported
from .gate import GateReport, Thresholds, compare
from .record import ExportRequest, Log, build_manifest, verification_record
from .sampler_step import build_step_model, step_model_io
from .source import source_eps

SUFFIX = ".sampler"  # unet.sampler.onnx, unet.sampler.lite.mindir
GATE_BATCHES = (1, 4)
# The final x after the whole loop, artifact vs the runtime's numpy loop around the MindSpore U-Net.
# onnxruntime: the fp32 default. Lite: its CPU kernels carry ~1e-4 relative error per U-Net call
# (export/gate.py), compounded over the steps; measured values in docs/sampler-step.md.
STEP_THRESHOLDS = {"onnx": Thresholds(), "mslite": Thresholds(atol=2e-3, min_cosine=0.9999)}
LOADERS = {"onnx": "onnxruntime", "mslite": "MindSpore Lite"}
Tensors = Tuple[List[TensorSpec], List[TensorSpec]]


def export_step(net: nn.Cell, source: Checkpoint, artifact: Path, artifact_name: str, request: ExportRequest,
                log: Log) -> Manifest:
    """Write the step artifact at `artifact` (`request.sampler` set) and return its manifest (verified, or marked
    unverified)."""
    tables = ScheduleTables.from_name(source.config.diffusion.schedule, source.config.diffusion.timesteps)
    table = request.sampler.scheduler(tables).table()  # bad --steps fail here, before the slow work
    settings = dataclasses.replace(request.sampler, steps=len(table.timesteps))
    exported, (inputs, outputs) = _write(net, source, table, artifact, request, log)
    log(f"built the sampler step around it: {settings.describe()}")
    unet = build_manifest(request, artifact_name, sha256_file(artifact), exported, source, {})
    manifest = dataclasses.replace(unet, inputs=inputs, outputs=outputs, sampler=settings.section(tables, inputs[0].shape))
    manifest.save(manifest_path_for(artifact))  # the gate loads the artifact through its manifest
    verification = verification_record(request, log, lambda: run_step_gate(
        artifact, manifest, net, source, request.gate.over(STEP_THRESHOLDS[request.format]), request.gate.seed, log))
    return dataclasses.replace(manifest, verification=verification)


def _write(net: nn.Cell, source: Checkpoint, table: StepTable, artifact: Path, request: ExportRequest,
           log: Log) -> Tuple[Exported, Tensors]:
    """The U-Net's ONNX, the step model around it at `artifact` (ONNX, or Lite converted from it), its tensors."""
    with tempfile.TemporaryDirectory(prefix="ms-ddpm-step.") as work:
        unet, step_path = Path(work) / "unet.onnx", Path(work) / "step.onnx"
        exported = _export_unet(net, source, unet, request, log)
        step = build_step_model(onnx.load(str(unet)), table, sampler=request.sampler.name)
        onnx.save(step, str(artifact if request.format == "onnx" else step_path))
        if request.format == "mslite":
            convert_onnx(step_path, artifact)
    inputs, outputs = step_model_io(step)
    notes = {**exported.notes, "sampler_step": "the U-Net and one scheduler step (export/sampler_step.py)"}
    if request.format == "mslite":  # the converter makes the int64 step index int32, as the loaded model reports
        inputs[1] = dataclasses.replace(inputs[1], dtype="int32")
        notes["lite"] = "sampler-step ONNX -> MindSpore Lite converter, cloud MindIR"
    return Exported(opset=exported.opset, notes=notes), (inputs, outputs)


def _export_unet(net: nn.Cell, source: Checkpoint, path: Path, request: ExportRequest, log: Log) -> Exported:
    """The U-Net's ONNX: optimised as asked for onnxruntime, always plain for Lite (Lite 2.0.0 converts the step
    model around the optimised U-Net, opset 20, but cannot load it: "compile graph failed")."""
    optimize = request.optimize and request.format == "onnx"
    log(f"exporting the U-Net to ONNX (batch {request.batch or 'dynamic'}{', optimised' if optimize else ''}) ...")
    try:
        return onnx_export.export(net, source.config.model, path, request.batch, request.opset, optimize=optimize)
    except (RuntimeError, ValueError) as exc:  # MindSpore's exporter raises these, with pages of text
        raise ToolkitError(f"MindSpore could not export the U-Net to ONNX: {first_line(exc)}") from exc


def run_step_gate(artifact: Path, manifest: Manifest, net: nn.Cell, source: Checkpoint, thresholds: Thresholds,
                  seed: int, log: Log, backend: Optional[str] = None) -> GateReport:
    """The step artifact's whole trajectories (on the runtime's `backend`; None: the format's default) vs the
    runtime's numpy loop around the MindSpore U-Net; then, for DDPM at all T steps, the end-to-end check.
    `artifact`'s manifest must lie beside it."""
    batches = (manifest.fixed_batch,) if manifest.fixed_batch else GATE_BATCHES
    reference = _reference(manifest, net, source)
    scheduler = manifest.sampler_settings.scheduler(reference.tables)
    loader = f"{backend or LOADERS[manifest.format]}, {manifest.sampler_settings.describe()}"
    log(f"verifying the sampler step ({loader}) over whole trajectories at batch sizes "
        f"{', '.join(map(str, batches))} ...")
    noise: Dict[str, np.ndarray] = {}
    for batch in batches:
        x_T, step_noise = reference.draw_noise(batch, scheduler.noise_steps, seed)
        noise[f"x_T_{batch}"] = x_T
        noise[f"step_noise_{batch}"] = np.asarray(list(step_noise), np.float32).reshape(-1, *x_T.shape)
    candidate = _denoise_in_child(artifact, noise, backend)
    timesteps = scheduler.table().timesteps
    cases = [_case(batch, timesteps, reference.denoise(scheduler, noise[f"x_T_{batch}"], noise[f"step_noise_{batch}"]),
                   candidate[f"x0_{batch}"], thresholds) for batch in batches]
    report = GateReport(thresholds=thresholds, seed=seed, cases=cases, loader=f"{loader}: final x of the loop")
    if report.passed and manifest.samples_reference_ddpm:
        report.notes.append(check_end_to_end(artifact, source.path, seed=seed, backend=backend, log=log).summary())
    return report


def _reference(manifest: Manifest, net: nn.Cell, source: Checkpoint) -> Sampler:
    """The runtime's loop with the numpy scheduler around the checkpoint's MindSpore U-Net (x, t int32 -> eps)."""
    x = manifest.inputs[0]
    unet = dataclasses.replace(manifest, inputs=[x, TensorSpec("t", "int32", x.shape[:1])],
                               outputs=[TensorSpec("eps", "float32", x.shape)], sampler=None)
    return Sampler(Backend("MindSpore", source_eps(net, source.config.model)), unet)


def _case(batch: int, timesteps: np.ndarray, expected: np.ndarray, got: np.ndarray, thresholds: Thresholds) -> dict:
    case = {"batch": batch, "t_min": int(timesteps.min()), "t_max": int(timesteps.max()), **compare(expected, got)}
    case["passed"] = thresholds.passes(case)
    return case


def _denoise_in_child(artifact: Path, noise: Dict[str, np.ndarray], backend: Optional[str]) -> Dict[str, np.ndarray]:
    """`python -m runtime.equivalence` on the artifact (on `backend`; None: the format's): x0_<batch> for each x_T_<batch>."""
    with tempfile.TemporaryDirectory(prefix="step-gate.") as work:
        inputs, outputs = Path(work) / "noise.npz", Path(work) / "samples.npz"
        np.savez(inputs, **noise)
        run_module("runtime.equivalence", artifact.resolve(), inputs, outputs, *(["--backend", backend] if backend else []),
                   what="the sampler-step gate's runtime")
        with np.load(outputs, allow_pickle=False) as samples:
            return dict(samples)
