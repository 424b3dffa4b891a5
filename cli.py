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

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .runtime.errors import ToolkitError, run_main

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, export and deploy the MindSpore tutorial's DDPM.")

# Each area keeps its commands in its own module; registration order is the order in --help.
from .train import commands as train_commands  # noqa: E402  (light: no MindSpore at import)

app.command("train")(train_commands.train)
app.command("noise")(train_commands.noise)

from .export import commands as export_commands  # noqa: E402  (light: MindSpore only inside the commands)

app.command("export")(export_commands.export)
app.command("verify")(export_commands.verify)

from .bench import commands as bench_commands  # noqa: E402  (light: heavy imports inside the commands)

app.command("bench")(bench_commands.bench)
app.command("quality")(bench_commands.quality)

from .runtime import web as web_command  # noqa: E402  (light: the standard library's http.server)

app.command("web")(web_command.web)


# `sample` options that only the runtime path (--artifact) uses.
RUNTIME_ONLY = ("backend", "scheduler", "steps", "eta", "spacing", "clip_x0", "batch", "threads", "provider")


@app.command()
def sample(
    ctx: typer.Context,
    checkpoint: Optional[Path] = typer.Option(None, help="MindSpore reference path: a .ckpt file or run directory."),
    artifact: Optional[Path] = typer.Option(None, help="Runtime path: an exported model (.onnx, .mindir, .lite.mindir) with its manifest <artifact>.json beside it."),
    backend: Optional[str] = typer.Option(None, help="Runtime backend: onnxruntime | mindspore | mslite (default: by the artifact's format)."),
    scheduler: str = typer.Option("ddpm", help="Runtime scheduler: ddpm | ddim | dpmpp (the reference path is always DDPM)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: T for ddpm, 50 for ddim, 20 for dpmpp)."),
    eta: float = typer.Option(0.0, help="DDIM eta (0 = deterministic, 1 = DDPM-like)."),
    spacing: str = typer.Option("trailing", help="Timestep spacing with fewer steps than T: linspace | leading | trailing."),
    clip_x0: bool = typer.Option(False, "--clip-x0", help="Clip each predicted x0 to [-1, 1]."),
    n: int = typer.Option(16, help="Number of images."),
    batch: Optional[int] = typer.Option(None, help="Images per U-Net call (default: all at once, or the artifact's fixed batch)."),
    seed: int = typer.Option(0, help="Seed of the numpy noise generator (same seed, same images)."),
    out: Path = typer.Option(Path("samples.png"), help="PNG grid to write."),
    gif: Optional[Path] = typer.Option(None, help="Also write a GIF of the denoising process."),
    npz: Optional[Path] = typer.Option(None, help="Also write the uint8 images as .npz (key: images)."),
    threads: Optional[int] = typer.Option(None, help="Runtime intra-op threads (default: the backend's)."),
    provider: Optional[List[str]] = typer.Option(None, help="onnxruntime execution provider(s), e.g. CUDAExecutionProvider."),
) -> None:
    """Generate images, either from a checkpoint (MindSpore reference DDPM sampler) or from an exported artifact (runtime)."""
    if (checkpoint is None) == (artifact is None):
        raise ToolkitError("give exactly one of --checkpoint (MindSpore reference) or --artifact (runtime)")
    if n < 1:
        raise ToolkitError(f"--n must be >= 1, got {n}")
    if checkpoint is not None:
        _refuse_runtime_options(ctx)
        train_commands.sample_reference(checkpoint, n=n, seed=seed, out=out, gif=gif, npz=npz)
    else:
        from .runtime import commands as runtime_commands

        runtime_commands.sample_artifact(artifact, backend=backend, scheduler=scheduler, steps=steps, eta=eta, n=n,
                                         batch=batch, seed=seed, out=out, gif=gif, npz=npz, threads=threads,
                                         providers=provider, spacing=spacing, clip_x0=clip_x0)


def _refuse_runtime_options(ctx: typer.Context) -> None:
    """The reference path is the tutorial's DDPM on MindSpore: runtime options given with it would be silently ignored."""
    given = [f"--{name.replace('_', '-')}" for name in RUNTIME_ONLY
             if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")]
    if given:
        raise ToolkitError(f"{', '.join(given)}: runtime option(s), for --artifact only; --checkpoint always samples "
                           "with the tutorial's DDPM on MindSpore")


def main() -> None:
    """Run the CLI; our errors become one line on stderr and their exit code, never a traceback."""
    run_main(lambda: app(prog_name="ms-ddpm" if Path(sys.argv[0]).name == "ms-ddpm" else "python cli.py"))


if __name__ == "__main__":
    main()
