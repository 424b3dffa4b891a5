"""Shared fixtures: a tiny config, a tiny (untrained) checkpoint, and a CLI runner."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from ms_ddpm.runtime.config import Config, DiffusionConfig, ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**train_overrides) -> Config:
    """A U-Net of a few thousand parameters on 8x8 grey images, T=10: fast enough for every test."""
    return Config(
        model=ModelConfig(image_size=8, channels=1, dim=8, dim_mults=(1, 2)),
        diffusion=DiffusionConfig(schedule="linear", timesteps=10),
        train=TrainConfig(steps=4, batch_size=4, checkpoint_every=2, log_every=1, **train_overrides),
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of an untrained tiny U-Net (random weights, seed 0)."""
    import mindspore as ms

    from ms_ddpm.train.checkpoint import save_checkpoint
    from ms_ddpm.train.model import build_unet

    ms.set_seed(0)
    config = tiny_config()
    net = build_unet(config.model)
    path = tmp_path_factory.mktemp("tiny") / "tiny.ckpt"
    return save_checkpoint(path, config, step=0, net=net)


# MindSpore Lite's only PyPI wheel is x86_64 Linux: tests that run Lite skip elsewhere.
LITE_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"
EXPORT_NAMES = {"onnx": "unet.onnx", "mindir": "unet.mindir", "mslite": "unet.lite.mindir"}


@pytest.fixture(scope="session")
def tiny_exports(tiny_checkpoint, tmp_path_factory) -> Dict[str, Path]:
    """The tiny checkpoint exported to each format (Lite where it runs), each with its manifest; unverified,
    as the numeric gate has its own tests. Treat as read-only: copy before damaging."""
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint

    folder = tmp_path_factory.mktemp("exports")
    return {fmt: export_checkpoint(tiny_checkpoint, ExportRequest(format=fmt, out=folder / name, gate=None),
                                   log=lambda _: None)
            for fmt, name in EXPORT_NAMES.items() if fmt != "mslite" or LITE_PLATFORM}


def checkpoint_with_changed_weight(source: Path, out: Path, factor: float, name: str = "final_conv.1.weight") -> Path:
    """A copy of the tiny checkpoint `source` with one weight scaled by `factor`: the gate must notice."""
    from ms_ddpm.train.checkpoint import load_model, save_checkpoint

    net = load_model(source)[0]
    param = next(p for p in net.trainable_params() if p.name == name)
    param.set_data(param.data * factor)
    return save_checkpoint(out, tiny_config(), step=0, net=net)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python cli.py ARGS` in a fresh process; returns the completed process (text output)."""
    full_env = {**os.environ, "GLOG_v": "3", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    """A bad input must give exit `code`, a one-line `error: ...` naming the problem, and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture(scope="session")
def host() -> Path:
    """The C++ host build/bin/ddpm-sample, built by its Makefile against the Lite wheel (a no-op when up to date, as
    `make hosts` leaves it)."""
    from ms_ddpm.runtime.bundle import HOST_BINARY
    from ms_ddpm.runtime.mslite.build import ensure_bridge, host_make_variables

    ensure_bridge()
    result = subprocess.run(["make", "-s", "-C", str(HOST_BINARY.parents[2]), *host_make_variables()],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return HOST_BINARY
