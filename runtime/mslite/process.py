"""Running Lite work in a child Python process (Lite cannot share a process with MindSpore, and its
exit-time destructors have crashed): the one way both the converter and the predictor start one."""
from __future__ import annotations

import signal
import subprocess
from typing import List

from ..errors import ToolkitError
from ..processes import module_command, quiet_env


def run_child(module_args: List[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    """`python -m <package>.MODULE ARGS...` with Lite's logging quiet; a timeout becomes a ToolkitError naming `what`."""
    try:
        return subprocess.run(module_command(*module_args), capture_output=True, text=True, timeout=timeout,
                              env=quiet_env())
    except subprocess.TimeoutExpired as exc:
        raise ToolkitError(f"{what} did not finish within {timeout:.0f} s") from exc


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
