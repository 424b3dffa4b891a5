"""The wheel as a user installs it: only `ms_ddpm/...` inside; in a fresh venv without MindSpore, run from a
folder with its own `runtime/`, `export.py` and `cli.py`, `ms-ddpm sample --artifact` and the README's Python
snippet work, and `ms-ddpm export` / `train` name the extra they need.

Offline: the wheel is built with the project venv's setuptools (--no-build-isolation); the base dependencies
(numpy, pillow, onnxruntime, typer, tqdm and what they require) come from the project venv through a .pth
file and a folder of links to exactly those distributions, so MindSpore stays out of reach.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Set

from packaging.requirements import Requirement

from conftest import REPO, assert_clean_error

SOURCES = ["pyproject.toml", "README.md", "__init__.py", "cli.py", "train", "export", "runtime", "bench"]
BASE = ["numpy", "pillow", "onnxruntime", "typer", "tqdm"]
BUDGET_S = 90  # build + venv + install, measured about 15 s on 2 busy cores


def _required(names) -> Set[str]:
    """The distributions `names` need at run time (no extras), recursively, as installed in this venv."""
    seen, todo = set(), list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def _link_farm(folder: Path) -> Path:
    """A folder of links to the files of the base dependencies (top-level packages, modules, dist-info)."""
    folder.mkdir()
    site = Path(metadata.distribution("numpy").locate_file(""))
    for name in _required(BASE):
        tops = {Path(str(file)).parts[0] for file in metadata.distribution(name).files or []}
        for top in tops - {"..", "__pycache__", "bin"}:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


def _build_and_install(tmp: Path) -> Path:
    """Build the wheel from a copy of the sources, make a venv, install it there; returns the venv's bin/."""
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", tmp / "dist", source], check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("ms_ddpm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    outside = [name for name in names if not re.match(r"ms_ddpm(/|-[^/]+\.dist-info/)", name)]
    assert not outside and not any("/tests/" in name for name in names), outside[:10]
    assert "ms_ddpm/runtime/pipeline.py" in names and "ms_ddpm/cli.py" in names

    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
                   check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "base_dependencies.pth").write_text(f"{_link_farm(tmp / 'deps')}\n")
    return env_dir / "bin"


def _app_folder(tmp: Path) -> Path:
    """A user's project with names that would shadow ours if we used them."""
    app = tmp / "app"
    (app / "runtime").mkdir(parents=True)
    (app / "runtime" / "__init__.py").write_text("raise ImportError('the app runtime package was imported')\n")
    for name in ("export.py", "cli.py"):
        (app / name).write_text(f"raise SystemExit('the app {name} ran')\n")
    return app


def test_the_wheel_installs_alone_and_runs_beside_a_users_own_runtime_export_and_cli(tiny_exports, tiny_checkpoint,
                                                                                     tmp_path):
    began = time.monotonic()
    bin_dir = _build_and_install(tmp_path)
    setup_s = time.monotonic() - began
    app = _app_folder(tmp_path)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([str(arg) for arg in args], cwd=app, env=env, capture_output=True, text=True, timeout=300)

    assert run(bin_dir / "python", "-c", "import mindspore").returncode != 0, "MindSpore is reachable from the venv"
    artifact = tmp_path / "model" / "unet.onnx"
    artifact.parent.mkdir()
    for path in (tiny_exports["onnx"], Path(f"{tiny_exports['onnx']}.json")):
        shutil.copy2(path, artifact.parent / path.name)

    result = run(bin_dir / "ms-ddpm", "sample", "--artifact", artifact, "--scheduler", "ddim", "--steps", "3", "--n", "2",
                 "--out", "grid.png")
    assert result.returncode == 0 and (app / "grid.png").is_file(), result.stderr[-2000:]

    snippet = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    snippet = snippet.replace('"unet.onnx"', repr(str(artifact))).replace("steps=20", "steps=5")  # the tiny model's T is 10
    snippet += "\nassert images.shape == (16, 8, 8, 1), images.shape\n"
    result = run(bin_dir / "python", "-c", snippet)
    assert result.returncode == 0, result.stderr[-2000:]

    assert_clean_error(run(bin_dir / "ms-ddpm", "export", "--checkpoint", tiny_checkpoint, "--format", "onnx"),
                       "this command needs the export extra: pip install 'ms-ddpm[export]'")
    assert_clean_error(run(bin_dir / "ms-ddpm", "train", "--out", "run"), "needs the train extra")
    assert_clean_error(run(bin_dir / "python", "-m", "ms_ddpm.cli", "noise", "x.png"), "needs the train extra")
    assert not (app / "run").exists()
    print(f"wheel built, venv made and installed in {setup_s:.1f} s")
    assert setup_s < BUDGET_S
