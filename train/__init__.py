"""MindSpore training module for the tutorial's DDPM.

Importing this package has no side effects. Every module here (and in export/) that imports MindSpore
calls `prepare_mindspore()` just before, which sets what MindSpore reads when it loads:

- ONEDNN_MAX_CPU_ISA=AVX2 on x86 CPUs with AVX-512 (read from /proc/cpuinfo): there MindSpore's oneDNN
  picks a reference kernel for NCHW 3x3 convolutions (about 0.7 GFLOP/s); capped at AVX2 it picks
  `gemm:jit`, about 10x faster. An AVX2-only CPU does not need it and never gets an ISA it lacks; a
  user-set value is always respected.
- GLOG_v=3 (errors only) unless set: MindSpore's default level prints deprecation warnings about its
  own internals on every import.
"""
from __future__ import annotations

import importlib.util
import os
import platform
from typing import Mapping, Optional, Tuple

from ..runtime.cpu import CPUINFO, cpu_flags
from ..runtime.errors import ToolkitError

ISA_VAR = "ONEDNN_MAX_CPU_ISA"
_note: Optional[str] = None  # the log line of the one prepare_mindspore() that ran in this process


def require_extra(extra: str, *modules: str) -> None:
    """Fail with one line naming the pip extra when one of `modules` is not installed."""
    if any(importlib.util.find_spec(module) is None for module in modules):
        raise ToolkitError(f"this command needs the {extra} extra: pip install 'ms-ddpm[{extra}]'")


def cpu_dispatch(environ: Mapping[str, str], machine: str, flags: Optional[set]) -> Tuple[Optional[str], str]:
    """(the ONEDNN_MAX_CPU_ISA value to set or None, a log line that says why)."""
    if ISA_VAR in environ:
        return None, f"{ISA_VAR}={environ[ISA_VAR]} (set by the user)"
    if machine.lower() not in ("x86_64", "amd64"):
        return None, f"{ISA_VAR}: n/a (not an x86 CPU)"
    if flags is None:
        return None, f"{ISA_VAR} not set (CPU flags unknown: no {CPUINFO})"
    if "avx512f" in flags:
        return "AVX2", (f"{ISA_VAR}=AVX2 (AVX-512 CPU: capped at AVX2 so oneDNN picks fast 3x3 convolution kernels; "
                        f"export {ISA_VAR}=ALL to opt out)")
    return None, f"{ISA_VAR} not set (no AVX-512 on this CPU: not needed)"


def prepare_mindspore() -> str:
    """Set MindSpore's load-time environment (once per process); returns the log line about the oneDNN ISA."""
    global _note
    if _note is None:
        value, _note = cpu_dispatch(os.environ, platform.machine(), cpu_flags())
        if value is not None:
            os.environ[ISA_VAR] = value
        os.environ.setdefault("GLOG_v", "3")
    return _note

