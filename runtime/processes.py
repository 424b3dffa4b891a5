"""Child Python processes of the toolkit, started by module name inside this package.

The package's own name is derived from this module's spec (`ms_ddpm` when installed), never written
out, and on Python >= 3.11 children start with `-P`: the working directory is not put on sys.path,
so a user's `runtime/`, `export.py` or `cli.py` cannot shadow ours.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import List, Optional

from .errors import ToolkitError

PACKAGE = __spec__.parent.rpartition(".")[0]  # "ms_ddpm.runtime" -> "ms_ddpm"
_SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []


def module_command(module: str, *args: object) -> List[str]:
    """`python -P -m <package>.<module> ARGS...`; `module` is relative to the package, e.g. "export.end_to_end"."""
    return [sys.executable, *_SAFE_PATH, "-m", f"{PACKAGE}.{module}", *map(str, args)]


def quiet_env() -> dict:
    """This process's environment, with MindSpore's and Lite's logging at errors only unless the user chose."""
    return {**os.environ, "GLOG_v": os.environ.get("GLOG_v", "3")}


def error_line(stderr: str) -> Optional[str]:
    """The last `error: ...` line a child printed (without the prefix), if any."""
    errors = [line[len("error: "):] for line in stderr.splitlines() if line.startswith("error: ")]
    return errors[-1] if errors else None


def run_module(module: str, *args: object, what: str, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """Run a package module in a fresh process; a failure becomes one ToolkitError naming `what`."""
    try:
        result = subprocess.run(module_command(module, *args), capture_output=True, text=True, timeout=timeout,
                                env=quiet_env())
    except subprocess.TimeoutExpired as exc:
        raise ToolkitError(f"{what} did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        detail = error_line(result.stderr) or (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolkitError(f"{what} failed: {detail}")
    return result
