"""Crash-safe file writing: write to a temporary name in the target directory, then rename.

A temporary is named `.<target>.<pid>.<random>.tmp[suffix]`. One left behind by a killed writer is
removed by the next write of the same target (its writer's pid no longer runs).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ToolkitError


def check_output_dir(path: str | os.PathLike) -> Path:
    """Fail early, with a clear message, when `path` cannot be written: its directory is tried for real,
    since permission bits say nothing to root and nothing about read-only or virtual file systems."""
    path = _check_target(path)
    _create_temporary(path).unlink()
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or an exception leaves either the old file or no file, never a torn one.
    `suffix` keeps the extension on the temporary name for writers that insist on one.
    """
    final = _check_target(path)
    _remove_stale_temporaries(final)
    tmp = _create_temporary(final, suffix)
    try:
        yield tmp
        _commit(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _check_target(path: str | os.PathLike) -> Path:
    """`path` as a Path, if its directory exists and it is not itself a directory."""
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        raise ToolkitError(f"output directory does not exist: {parent}")
    if not parent.is_dir():
        raise ToolkitError(f"output directory is not a directory: {parent}")
    if path.is_dir():
        raise ToolkitError(f"output path is a directory: {path}")
    return path


def _create_temporary(final: Path, suffix: str = "") -> Path:
    """A new empty temporary beside `final`, named after it and this process."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=final.parent)
    except OSError as exc:
        raise ToolkitError(f"output directory is not writable: {final.parent} ({exc.strerror})") from exc
    os.close(fd)
    return Path(name)


def _commit(tmp: Path, final: Path) -> None:
    """Make the finished temporary durable, then rename it onto `final`."""
    try:
        _make_durable(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        raise ToolkitError(f"cannot write {final}: {exc.strerror or exc}") from exc


def _make_durable(path: Path) -> None:
    """fsync the finished file and give it the usual permissions (mkstemp makes 0600; writers may make 0400)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _remove_stale_temporaries(final: Path) -> None:
    """Delete the temporaries of `final` whose writers were killed (mkstemp's random part is 8 of [a-z0-9_])."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(\d+)\.[a-z0-9_]{{8}}\.tmp")
    for candidate in final.parent.glob(f".{glob.escape(final.name)}.*.tmp*"):
        match = pattern.match(candidate.name)
        if match and not _running(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as someone else's
        pass
    return True


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
