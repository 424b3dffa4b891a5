"""Launching data-parallel training with MindSpore's own launcher, `msrun`, on this machine.

`ms-ddpm train --workers N` checks what would otherwise fail late (msrun missing, a worker count that
does not divide the batch, a master port in use: msrun's workers would wait out the whole cluster
timeout), then runs msrun, which starts a scheduler and N workers, each running this
`train` command with `--distributed`.
No MindSpore here: this side only starts processes.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import typer

from ..runtime.errors import ToolkitError, check_minimum

MSRUN_VARIABLES = ("MS_ROLE", "MS_WORKER_NUM", "MS_SCHED_HOST", "MS_SCHED_PORT")  # what msrun sets in each process
LAUNCHER_OPTIONS = ("--workers", "--master-port")  # consumed here, not passed on to the workers
LOG_FOLDER = "msrun"  # under the run directory: scheduler.log, worker_<rank>.log, msrun.log


def msrun_worker_count() -> int:
    """The number of workers of the msrun job this process belongs to; fails when not started by msrun."""
    missing = [name for name in MSRUN_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ToolkitError(f"--distributed needs MindSpore's msrun launcher ({missing[0]} is not set): use "
                           "`ms-ddpm train --workers N ...` or `msrun ... cli.py train --distributed ...` (see README)")
    return int(os.environ["MS_WORKER_NUM"])


def check_batch_split(batch_size: int, workers: int) -> None:
    """Every worker takes an equal, contiguous slice of each global batch."""
    check_minimum("--workers", workers)
    if batch_size % workers:
        raise ToolkitError(f"batch size {batch_size} is not divisible by {workers} workers "
                           f"(each worker trains on an equal slice of every batch)")


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Fail now if msrun's scheduler could not listen on `port`."""
    if not 1024 <= port <= 65535:
        raise ToolkitError(f"--master-port must be in 1024..65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ToolkitError(f"master port {port} is already in use on this machine; pick another --master-port") from exc


def worker_arguments(argv: Sequence[str]) -> List[str]:
    """This command line as each worker runs it: the launcher's own options removed, --distributed added."""
    kept: List[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in LAUNCHER_OPTIONS:
            skip_value = True
        elif not arg.startswith(tuple(option + "=" for option in LAUNCHER_OPTIONS)):
            kept.append(arg)
    return kept + ["--distributed"]


def msrun_environment() -> Tuple[str, Dict[str, str]]:
    """msrun's path and an environment whose PATH starts with this Python's bin (msrun starts `python` from PATH)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}
    msrun = shutil.which("msrun", path=env["PATH"])
    if msrun is None or not (bin_dir / "python").exists():
        raise ToolkitError(f"msrun (from MindSpore) and python must both be in {bin_dir}; install MindSpore there")
    return msrun, env


def msrun_command(msrun: str, workers: int, port: int, log_dir: Path, script: Path, arguments: Sequence[str]) -> List[str]:
    """msrun for `workers` workers on this machine; it tails rank 0's log to the console and waits for all."""
    return [msrun, f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={port}",
            f"--log_dir={log_dir}", "--join=True", "--tail_worker_log=0", str(script), *arguments]


def launch_workers(workers: int, port: int, run_dir: Path, batch_size: int, argv: Sequence[str]) -> None:
    """Run this `train` command as `workers` data-parallel msrun workers; raise the first worker error."""
    check_batch_split(batch_size, workers)
    check_port_free(port)
    msrun, env = msrun_environment()
    log_dir = run_dir.resolve() / LOG_FOLDER
    log_dir.mkdir(parents=True, exist_ok=True)
    command = msrun_command(msrun, workers, port, log_dir, Path(argv[0]).resolve(), worker_arguments(argv[1:]))
    typer.echo(f"launching {workers} workers: {' '.join(command)}")
    with open(log_dir / "msrun.log", "w", encoding="utf-8") as msrun_log:
        process = subprocess.Popen(command, env=env, stderr=msrun_log)
        try:
            code = process.wait()
        except KeyboardInterrupt as exc:  # msrun stops every worker on SIGINT (a terminal's Ctrl-C already sent it one)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            process.wait()
            raise ToolkitError(f"interrupted; all workers stopped (logs: {log_dir})") from exc
    if code != 0:
        raise ToolkitError(first_worker_error(log_dir) or f"distributed training failed (msrun exit {code}); logs: {log_dir}")
    typer.echo(f"{workers} workers finished; checkpoint: {run_dir / 'checkpoints' / 'latest.ckpt'}; logs: {log_dir}")


def first_worker_error(log_dir: Path) -> str:
    """The first one-line `error: ...` a worker printed, naming its log; empty if none did."""
    for log in sorted(log_dir.glob("worker_*.log")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("error: "):
                return f"{line[len('error: '):]} ({log.name} in {log_dir})"
    return ""
