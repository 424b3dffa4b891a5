"""The error types users see: a clear, one-line message; the CLI prints it and exits with `exit_code`."""


class ToolkitError(Exception):
    """A problem with the user's input or environment, explained in one line (exit code 2)."""

    exit_code = 2


class VerificationFailed(ToolkitError):
    """A numeric gate failed: the artifact does not compute what the source model computes (exit code 1)."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's first line, for one-line error messages."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__
