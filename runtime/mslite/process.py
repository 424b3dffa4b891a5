"""Running Lite work in a child Python process (Lite cannot share a process with MindSpore, and its
exit-time destructors have crashed): the one way both the converter and the predictor start one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import List

from ..errors import ToolkitError


def run_child(module_args: List[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` with Lite's logging quiet; a timeout becomes a ToolkitError naming `what`."""
    try:
        return subprocess.run([sys.executable, "-m", *module_args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "GLOG_v": os.environ.get("GLOG_v", "3")})
    except subprocess.TimeoutExpired:
        raise ToolkitError(f"{what} did not finish within {timeout:.0f} s") from None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
