"""The error types users see: a clear, one-line message; the CLI prints it and exits with `exit_code`."""


class ToolkitError(Exception):
    """A problem with the user's input or environment, explained in one line (exit code 2)."""

    exit_code = 2


class VerificationFailed(ToolkitError):
    """A numeric gate failed: the artifact does not compute what the source model computes (exit code 1)."""

    exit_code = 1
