"""What this machine's CPU is, from /proc/cpuinfo (Linux): its model name and its instruction-set flags.

The one reader for everything that depends on the CPU: the oneDNN setting before MindSpore loads
(train/), the onnxruntime model cache's key (runtime/ort_session.py) and the bench's machine line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Set

CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_field(key: str, cpuinfo: Path = CPUINFO) -> Optional[str]:
    """The value of the first `key : value` line of /proc/cpuinfo; None where there is none."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.split(":", 1)[0].strip() == key and ":" in line), None)


def cpu_flags(cpuinfo: Path = CPUINFO) -> Optional[Set[str]]:
    """The CPU's feature flags; None where /proc/cpuinfo cannot be read."""
    flags = cpuinfo_field("flags", cpuinfo)
    return None if flags is None else set(flags.split())


def cpu_model(cpuinfo: Path = CPUINFO) -> Optional[str]:
    """The CPU's model name, e.g. "AMD EPYC 7B13"; None where unknown."""
    return cpuinfo_field("model name", cpuinfo)
