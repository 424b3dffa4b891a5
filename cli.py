"""One CLI over the toolkit: train -> sample -> export -> verify -> (runtime) sample -> bench.

Installed, it is the `ms-ddpm` command (`ms_ddpm.cli:main`); in a checkout, `python cli.py ...` runs the
same code through the editable install that `make setup` makes. Run `--help`, or `COMMAND --help`. Every
command imports its heavy libraries lazily, so runtime-only commands never load MindSpore.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python cli.py` in a checkout: run it as the package's module
    import importlib.util
    import runpy
    import sys
    from pathlib import Path

    _spec = importlib.util.find_spec("ms_ddpm")
    if _spec is None or Path(_spec.origin).resolve().parent != Path(__file__).resolve().parent:
        print("error: this checkout is not the installed ms_ddpm package: run `make setup` (or `pip install -e .`) here",
              file=sys.stderr)
        sys.exit(2)
    runpy.run_module("ms_ddpm.cli", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import functools
import os
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from .runtime.errors import DEBUG_ENV, ToolkitError, check_minimum, run_main

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, export and deploy the MindSpore tutorial's DDPM.")
# Usage errors (click's, vendored by recent typer) become our one `error:` line; found by name in typer's own class.
USAGE_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")


class Interrupted(ToolkitError):
    exit_code = 130


def interruptible(command: Callable[..., Any]) -> Callable[..., Any]:
    """A command that ends on Ctrl-C with one line and exit 130; writes are atomic, so no partial file is left.

    SIGTERM counts as Ctrl-C: while a compiled graph runs, MindSpore turns SIGINT into a SIGTERM to its own process.
    """
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted("interrupted; no partial output was written") from exc
        finally:
            signal.signal(signal.SIGTERM, previous)
    return run


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"ms-ddpm {metadata.version('ms-ddpm')}")
        raise typer.Exit()


@app.callback()
def options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help=f"On an error, print the full chained traceback too "
                                                      f"(same as {DEBUG_ENV}=1; child processes inherit it)."),
) -> None:
    """Train, export and deploy the MindSpore tutorial's DDPM."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


# Each area keeps its commands in its own module; registration order is the order in --help.
from .train import commands as train_commands  # noqa: E402  (light: no MindSpore at import)

app.command("train")(train_commands.train)
app.command("noise")(interruptible(train_commands.noise))

from .export import commands as export_commands  # noqa: E402  (light: MindSpore only inside the commands)

app.command("export")(interruptible(export_commands.export))
app.command("verify")(interruptible(export_commands.verify))

from .bench import commands as bench_commands  # noqa: E402  (light: heavy imports inside the commands)

app.command("bench")(bench_commands.bench)
app.command("quality")(bench_commands.quality)

from .runtime import web as web_command  # noqa: E402  (light: the standard library's http.server)

app.command("web")(web_command.web)

from .runtime import commands as runtime_commands  # noqa: E402  (light: onnxruntime only inside `sample`)

app.command("info")(runtime_commands.info)
app.command("bundle")(interruptible(runtime_commands.bundle))
app.command("samplers")(runtime_commands.samplers)


# `sample` options that only the runtime path (--artifact) uses.
RUNTIME_ONLY = ("backend", "scheduler", "steps", "eta", "spacing", "clip_x0", "batch", "threads", "provider", "precision")


@app.command()
@interruptible
def sample(
    ctx: typer.Context,
    checkpoint: Optional[Path] = typer.Option(None, help="MindSpore reference path: a .ckpt file or run directory."),
    artifact: Optional[Path] = typer.Option(None, help="Runtime path: an exported model (.onnx, .mindir, .lite.mindir) with its manifest <artifact>.json beside it."),
    backend: Optional[str] = typer.Option(None, help="Runtime backend: onnxruntime | openvino | mindspore | mslite (default: by the artifact's format; onnx: onnxruntime)."),
    scheduler: Optional[str] = typer.Option(None, help="Runtime scheduler: dpmpp-sde (default) | ddpm | ddim | dpmpp | dpmpp3m; "
                                                       "a sampler-step artifact runs the one it carries (the reference path is always DDPM)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: T for ddpm, 50 for ddim, 10 for dpmpp-sde, 20 for dpmpp and dpmpp3m)."),
    eta: Optional[float] = typer.Option(None, help="DDIM eta (default 0 = deterministic, 1 = DDPM-like)."),
    spacing: Optional[str] = typer.Option(None, help="Timestep spacing with fewer steps than T: linspace | leading | trailing (default) | logsnr | karras."),
    clip_x0: Optional[bool] = typer.Option(None, "--clip-x0/--no-clip-x0", help="Clip each predicted x0 to [-1, 1] (default: no)."),
    n: int = typer.Option(16, help="Number of images."),
    batch: Optional[int] = typer.Option(None, help="Images per U-Net call (default: all at once, or the artifact's fixed batch)."),
    seed: int = typer.Option(0, help="Seed of the portable noise generator, docs/noise.md (same seed, same images on every host)."),
    out: Path = typer.Option(Path("samples.png"), help="The grid to write: .png, .jpg or .webp (format by suffix)."),
    gif: Optional[Path] = typer.Option(None, help="Also write a GIF of the denoising process."),
    npz: Optional[Path] = typer.Option(None, help="Also write the uint8 images as .npz (key: images)."),
    threads: Optional[int] = typer.Option(None, help="Runtime intra-op threads (default: the backend's)."),
    provider: Optional[List[str]] = typer.Option(None, help="onnxruntime execution provider(s), e.g. CUDAExecutionProvider."),
    precision: Optional[str] = typer.Option(None, help="openvino: fp32 (default) | bf16 (CPUs with AMX or AVX512-BF16; "
                                                       "its own end-to-end threshold: verify --precision bf16)."),
    progress: bool = typer.Option(True, help="Show a progress bar (only ever on a terminal)."),
) -> None:
    """Generate images, either from a checkpoint (MindSpore reference DDPM sampler) or from an exported artifact (runtime)."""
    if (checkpoint is None) == (artifact is None):
        raise ToolkitError("give exactly one of --checkpoint (MindSpore reference) or --artifact (runtime)")
    check_minimum("--n", n)
    if checkpoint is not None:
        _refuse_runtime_options(ctx)
        train_commands.sample_reference(checkpoint, n=n, seed=seed, out=out, gif=gif, npz=npz, progress=progress)
    else:
        runtime_commands.sample_artifact(artifact, backend=backend, scheduler=scheduler, steps=steps, eta=eta, n=n,
                                         batch=batch, seed=seed, out=out, gif=gif, npz=npz, threads=threads,
                                         providers=provider, spacing=spacing, clip_x0=clip_x0, precision=precision,
                                         progress=progress)


def _refuse_runtime_options(ctx: typer.Context) -> None:
    """The reference path is the tutorial's DDPM on MindSpore: runtime options given with it would be silently ignored."""
    given = [f"--{name.replace('_', '-')}" for name in RUNTIME_ONLY
             if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")]
    if given:
        raise ToolkitError(f"{', '.join(given)}: runtime option(s), for --artifact only; --checkpoint always samples "
                           "with the tutorial's DDPM on MindSpore")


def main() -> None:
    """Run the CLI; our errors and usage errors become one line on stderr and their exit code, never a traceback."""
    run_main(_run_app)


def _run_app() -> None:
    prog = "ms-ddpm" if Path(sys.argv[0]).name == "ms-ddpm" else "python cli.py"
    try:
        code = app(prog_name=prog, standalone_mode=False)  # returns --help's and typer.Exit's code; raises the rest
    except USAGE_ERROR as exc:
        if not exc.format_message():  # no command given: the help was printed instead
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else prog
        raise ToolkitError(f"{exc.format_message()} (see: {command} --help)") from exc
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
