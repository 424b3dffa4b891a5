"""The README's CLI lines, run as written (tiny sizes substituted) and in order, from a scratch folder outside
the repository with the README's relative paths: README and code cannot drift apart, and every command works
from any folder, its relative paths taken against that folder.

Left out, each covered by its own test: `bench` (tests/test_bench.py), `quality` (tests/test_quality_*.py) and
the msrun lines, `--workers` or `msrun ...` (tests/test_distributed.py).
"""
from __future__ import annotations

import gzip
import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

from conftest import LITE_PLATFORM, REPO

COVERED_ELSEWHERE = ("bench", "quality")
TINY_MODEL = ["--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--timesteps", "10", "--batch-size", "4"]
TINY_VALUES = {"--steps": "3", "--n": "2"}  # replaced wherever a line sets them
COMMAND = Path(sys.executable).with_name("ms-ddpm")  # the installed console script


def readme_command_lines() -> List[List[str]]:
    """Every `ms-ddpm ...` line of the README's shell blocks, as arguments, comments removed."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    return [shlex.split(line, comments=True)[1:] for block in blocks for line in block.splitlines()
            if line.startswith("ms-ddpm ")]


def tiny(args: List[str]) -> List[str]:
    """The line with tiny sizes: TINY_VALUES in place, and a tiny model for a new training run."""
    args = [TINY_VALUES.get(args[index - 1], arg) if index else arg for index, arg in enumerate(args)]
    if args[0] == "train" and "--resume" not in args:
        args += TINY_MODEL + ["--steps", TINY_VALUES["--steps"]] * ("--steps" not in args)
    elif args[0] == "train":
        args[args.index("--steps") + 1] = "5"  # longer than the first run
    return args


def _inputs(folder: Path) -> None:
    """What the README's lines read: Fashion-MNIST-shaped IDX files at the README's path, and cat.jpg."""
    data = folder / "path" / "to" / "fashion-mnist"
    data.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    with gzip.open(data / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">HBBIII", 0, 8, 3, *images.shape) + images.tobytes())
    Image.new("RGB", (40, 30), (200, 120, 40)).save(folder / "cat.jpg")


def test_the_readme_lists_the_cli():
    names = {args[0] for args in readme_command_lines()}
    assert {"train", "sample", "noise", "export", "verify", "info", "bench", "quality", "bundle"} <= names, names


def test_every_readme_cli_line_runs_from_a_folder_outside_the_repository(tmp_path):
    assert not tmp_path.resolve().is_relative_to(REPO)
    _inputs(tmp_path)
    env = {**os.environ, "GLOG_v": "3"}
    ran = []
    for args in map(tiny, readme_command_lines()):
        if args[0] in COVERED_ELSEWHERE or "--workers" in args or ("mslite" in args and not LITE_PLATFORM):
            continue
        result = subprocess.run([str(COMMAND), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
        ran.append(args)
    expected = ["grid.png", "denoise.gif", "strip.png", "runtime.jpg", "runs/fmnist/export/unet.onnx.json",
                "runs/fmnist/export/unet.mindir.json", "site/index.html", "site/bundle.json"] + ["runs/fmnist/export/unet.lite.mindir.json"] * LITE_PLATFORM
    assert all((tmp_path / name).is_file() for name in expected), sorted(map(str, tmp_path.rglob("*")))
    with Image.open(tmp_path / "runtime.jpg") as picture:
        assert picture.format == "JPEG"
    assert len(ran) >= 10, ran
