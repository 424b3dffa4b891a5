"""The error types users see: a clear, one-line message; the CLI prints it and exits with `exit_code`.

Every entry point (the CLI and each child-process module) runs through `run_main`, so an error is one
`error: ...` line on stderr by default; with MS_DDPM_DEBUG=1 the full chained traceback comes first.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, NoReturn, Optional

DEBUG_ENV = "MS_DDPM_DEBUG"


class ToolkitError(Exception):
    """A problem with the user's input or environment, explained in one line (exit code 2)."""

    exit_code = 2


class VerificationFailed(ToolkitError):
    """A numeric gate failed: the artifact does not compute what the source model computes (exit code 1)."""

    exit_code = 1


def check_minimum(option: str, value: Optional[int], minimum: int = 1) -> None:
    """A command-line value below its minimum (None: not given) is a one-line error naming the option."""
    if value is not None and value < minimum:
        raise ToolkitError(f"{option} must be >= {minimum}, got {value}")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's first line, for one-line error messages."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def exit_with(exc: ToolkitError) -> NoReturn:
    """Print `error: <message>` (after the chained traceback when debugging) and exit with the error's code."""
    if debug_enabled():
        traceback.print_exception(exc)
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point; a ToolkitError becomes one `error:` line and its exit code, never a traceback."""
    try:
        main()
    except ToolkitError as exc:
        exit_with(exc)
