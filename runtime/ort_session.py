"""onnxruntime sessions of the runtime: session options, and a cached onnxruntime-optimised model.

- Thread spinning (`session.intra_op.allow_spinning`): off by default; MS_DDPM_ORT_SPINNING=1 turns it on.
  Spinning worker threads burn the cores another process, or onnxruntime's own next kernel, needs: off
  was faster on the shared 2-core machine of docs/benchmarks.md (median 0.67-0.72x at batch 1 and 64).
- The optimised-model cache: onnxruntime's ORT_ENABLE_ALL graph (fusions, NCHWc layout) is saved beside
  the artifact as `<artifact>.ort-cache.onnx` (CPU provider only), with `<artifact>.ort-cache.json` recording what it was built
  from: the artifact's sha256, the onnxruntime version, the execution providers and the CPU's flags (the
  NCHWc form is specific to the CPU's vector width). A later session loads the cached graph with
  optimisations off (half the session time) only when every one of those matches and the cached file's
  own sha256 is the recorded one; otherwise it rebuilds both, atomically, once the caller has found the
  session good (so that a rejected artifact leaves nothing beside it). A folder it cannot write is skipped
  (a debug log line). Off by default, as it writes files beside the artifact; MS_DDPM_ORT_CACHE=1 turns it on
  (session creation 0.54 s -> 0.44 s on the tutorial-size U-Net, docs/benchmarks.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

from .cpu import cpu_flags, cpu_model
from .errors import ToolkitError
from .files import sha256_file, write_bytes_atomic, write_text_atomic

SPINNING_ENV = "MS_DDPM_ORT_SPINNING"
CACHE_ENV = "MS_DDPM_ORT_CACHE"
CACHE_SUFFIX = ".ort-cache"
CPU_PROVIDER = "CPUExecutionProvider"  # the cache is for onnxruntime's CPU provider only

_log = logging.getLogger(__name__)
Session = Tuple[Any, Callable[[], None]]  # an InferenceSession, and what saves its cache (call once it is known good)


def create_session(ort: Any, artifact: Path, providers: Sequence[str], threads: Optional[int]) -> Session:
    """An InferenceSession on `artifact`, through the cache when MS_DDPM_ORT_CACHE=1, and the function that
    saves a rebuilt cache beside the artifact (a no-op when there is nothing to save)."""
    options = session_options(ort, threads)
    if not _env_flag(CACHE_ENV, False) or list(providers) != [CPU_PROVIDER]:  # other providers compile their own graphs
        return ort.InferenceSession(str(artifact), options, providers=list(providers)), _nothing
    cache = OptimizedModelCache(artifact, ort.__version__, providers)
    if cache.valid():
        try:
            return ort.InferenceSession(str(cache.model), _prebuilt(ort, threads), providers=list(providers)), _nothing
        except Exception as exc:  # onnxruntime's own types: the cache is rebuilt below
            _log.debug("cached onnxruntime model %s does not load (%s); rebuilding it", cache.model, exc)
    return cache.build(ort, options, providers)


def session_options(ort: Any, threads: Optional[int]) -> Any:
    """ORT_ENABLE_ALL, errors-only logging, `threads` intra-op threads (None: onnxruntime's choice), spinning."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if _env_flag(SPINNING_ENV, False) else "0")
    return options


def _prebuilt(ort: Any, threads: Optional[int]) -> Any:
    """Options for a graph onnxruntime already optimised: no optimisation pass again."""
    options = session_options(ort, threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


class OptimizedModelCache:
    """`<artifact>.ort-cache.onnx` and its record `<artifact>.ort-cache.json`, for one environment."""

    def __init__(self, artifact: Path, ort_version: str, providers: Sequence[str]):
        self.artifact = artifact
        self.model = artifact.with_name(artifact.name + CACHE_SUFFIX + ".onnx")
        self.record = artifact.with_name(artifact.name + CACHE_SUFFIX + ".json")
        self.key = {"artifact_sha256": sha256_file(artifact), "onnxruntime": ort_version,
                    "providers": list(providers), "cpu": cpu_fingerprint()}

    def valid(self) -> bool:
        """The record is this environment's and this artifact's, and the cached model is the recorded one."""
        try:
            recorded = json.loads(self.record.read_text())
            return recorded.get("key") == self.key and recorded.get("model_sha256") == sha256_file(self.model)
        except (OSError, ValueError):  # missing, unreadable or torn: not valid
            return False

    def build(self, ort: Any, options: Any, providers: Sequence[str]) -> Session:
        """A session on the artifact, and the function that saves its optimised graph as the cache."""
        with tempfile.TemporaryDirectory(prefix="ms-ddpm-ort.") as work:
            options.optimized_model_filepath = str(Path(work) / "optimized.onnx")
            session = ort.InferenceSession(str(self.artifact), options, providers=list(providers))
            optimized = Path(options.optimized_model_filepath).read_bytes()
        return session, lambda: self.save(optimized)

    def save(self, optimized: bytes) -> None:
        """Write the cached model, then its record, each atomically; skipped where the folder cannot be written."""
        try:
            write_bytes_atomic(self.model, optimized)
            write_text_atomic(self.record, json.dumps({"key": self.key, "model_sha256": hashlib.sha256(optimized).hexdigest()}))
        except ToolkitError as exc:  # the folder is read-only or full: run without a cache
            _log.debug("no onnxruntime model cache beside %s: %s", self.artifact, exc)


def cpu_fingerprint() -> str:
    """A digest of the CPU's model and instruction-set flags (/proc/cpuinfo; elsewhere, `platform`'s names)."""
    flags = cpu_flags()
    facts = [platform.machine(), platform.processor()] if flags is None else [cpu_model() or "", *sorted(flags)]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def _nothing() -> None:
    """The cache-saving function when there is nothing to save."""


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip()
    return default if value == "" else value not in ("0", "false", "no", "off")
