"""Killed mid-run: `ms-ddpm train` and `ms-ddpm export` are SIGKILLed at random points and inside their
writes, then resumed or rerun.

Training: the latest checkpoint always loads, at most one checkpoint interval is lost, and `--resume`
continues to exactly the weights, EMA, Adam state (its step counter drives the LR schedule) and loss
curve of an uninterrupted run. Export: a kill leaves the old artifact or none, never a torn one and
never a new artifact beside an old manifest. Kill points inside a write use the test-only plug-in
tests/fault_injection/sitecustomize.py (MS_DDPM_TEST_HOLD_BEFORE_RENAME): the temporary is complete, the
rename not done.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

from conftest import REPO
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.runtime.files import sha256_file
from ms_ddpm.runtime.manifest import manifest_path_for

STEPS, EVERY = 24, 3
TRAIN = ["--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--timesteps", "10", "--batch-size", "4",
         "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--log-every", "1", "--ema", "0.9", "--no-progress"]
START_TIMEOUT = 240  # seconds until a process reaches its kill point, on 2 busy cores
FAULT_INJECTION = Path(__file__).resolve().parent / "fault_injection"  # its sitecustomize.py holds a rename
HOLD_BEFORE_RENAME = "MS_DDPM_TEST_HOLD_BEFORE_RENAME"


@dataclass
class Child:
    """An `ms-ddpm` process (`cli.py`) running in the background, its stderr in a file."""

    process: subprocess.Popen
    stderr: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"exit {self.process.returncode} before {what}: {self.stderr.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.01)

    def wait_for_hold(self) -> None:
        self.wait_until(lambda: f"{HOLD_BEFORE_RENAME}: holding" in self.stderr.read_text(), "the held rename")


def _start(tmp: Path, *args, hold: Optional[str] = None) -> Child:
    """`ms-ddpm ARGS` in the background; `hold` (NAME:N) loads the fault-injection plug-in to hold that rename."""
    env = {key: value for key, value in os.environ.items() if key != HOLD_BEFORE_RENAME}
    env["GLOG_v"] = "3"
    if hold:
        env.update({HOLD_BEFORE_RENAME: hold,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(FAULT_INJECTION), env.get("PYTHONPATH")]))})
    stderr = tmp / f"stderr-{time.monotonic_ns()}.txt"
    with open(stderr, "w") as sink:
        process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=sink)
    return Child(process, stderr)


def _logged(run: Path) -> List[dict]:
    path = run / "train_log.jsonl"
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("\n")]


def _temporaries(folder: Path) -> List[str]:
    return sorted(path.name for path in folder.glob(".*.tmp*"))


def _check_after_kill(run: Path) -> int:
    """The latest checkpoint loads, is consistent, and lags the log by at most one interval; returns its step."""
    from ms_ddpm.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run)
    last_logged = max((record["step"] for record in _logged(run)), default=0)
    assert checkpoint.step % EVERY == 0 and 0 < checkpoint.step <= last_logged, (checkpoint.step, last_logged)
    assert last_logged - checkpoint.step <= EVERY, "more than one checkpoint interval lost"
    assert int(checkpoint.optimizer_state["global_step"].item()) == checkpoint.step  # Adam's step: the LR position
    return checkpoint.step


def _finish_and_compare_with_an_uninterrupted_run(run: Path, straight: Path) -> None:
    """Resume `run` to the end, train `straight` without a break: weights, EMA, Adam state (its step counter drives
    the LR schedule) and loss curve must agree. Both run here, through the trainer behind `train --resume`: two
    process starts fewer (each costs 10-20 s of MindSpore import and compilation)."""
    from ms_ddpm.train import trainer as trainer_module
    from ms_ddpm.train.checkpoint import load_checkpoint
    from ms_ddpm.train.data import load_images, to_model_range

    config = load_checkpoint(run).config
    images = to_model_range(load_images(config.train.data, config.model.image_size, config.model.channels))
    trainer_module.train(config, images, run, resume=True, show_progress=False)
    assert _temporaries(run / "checkpoints") == []
    resumed = load_checkpoint(run)
    reference = load_checkpoint(trainer_module.train(config, images, straight, show_progress=False).checkpoint)
    assert resumed.step == reference.step == STEPS
    for table in ("weights", "ema_weights", "optimizer_state"):
        ours, theirs = getattr(resumed, table), getattr(reference, table)
        assert ours.keys() == theirs.keys() and ours, table
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-6, err_msg=f"{table} {name}")
    curve = _logged(run)
    assert [r["step"] for r in curve] == list(range(1, STEPS + 1)), "the loss curve has gaps or repeats"
    np.testing.assert_allclose([r["loss"] for r in curve], [r["loss"] for r in _logged(straight)], rtol=1e-5)


def test_training_killed_at_random_points_and_inside_a_checkpoint_write_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    rng = np.random.default_rng(2024)  # the random kill points, reproducible
    kill_points = []

    def kill_at_random(*args: str) -> None:
        """Kill soon after the log passes a random step beyond everything logged so far (and beyond the first
        checkpoint: its log line is written just before it)."""
        target = max((r["step"] for r in _logged(run)), default=0) + int(rng.integers(EVERY + 1, 2 * EVERY + 1))
        child = _start(tmp_path, "train", "--out", run, *args)
        child.wait_until(lambda: bool(_logged(run)) and _logged(run)[-1]["step"] >= target, f"step {target}")
        time.sleep(float(rng.uniform(0, 0.15)))  # somewhere inside the next step or checkpoint write
        child.kill()
        kill_points.append(f"random, after step {target}")
        _check_after_kill(run)

    kill_at_random(*TRAIN)

    start = _check_after_kill(run)
    child = _start(tmp_path, "train", "--out", run, "--resume", hold="latest.ckpt:2")
    child.wait_for_hold()
    child.kill()
    kill_points.append("inside the second checkpoint write of a resumed run")
    assert _check_after_kill(run) == start + EVERY  # the first write landed; the second never replaced it
    held = _temporaries(run / "checkpoints")
    assert held, "the held temporary should be on disk"

    kill_at_random("--resume")
    assert not set(held) & set(_temporaries(run / "checkpoints")), "the killed writer's temporary was not cleaned"

    _finish_and_compare_with_an_uninterrupted_run(run, tmp_path / "straight")
    assert len(kill_points) == 3, kill_points


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    """A second tiny checkpoint (other weights), so that old and new artifacts differ."""
    import mindspore as ms

    from conftest import tiny_config
    from ms_ddpm.train.checkpoint import save_checkpoint
    from ms_ddpm.train.model import build_unet

    ms.set_seed(1)
    return save_checkpoint(tmp_path_factory.mktemp("other") / "other.ckpt", tiny_config(), step=0,
                           net=build_unet(tiny_config().model))


def _pair(out: Path) -> Dict[str, Optional[str]]:
    """sha256 of the artifact and of its manifest (None where missing)."""
    return {path.name: sha256_file(path) if path.exists() else None for path in (out, manifest_path_for(out))}


def _usable(out: Path) -> bool:
    from ms_ddpm.runtime.pipeline import Sampler

    try:
        Sampler.load(out)
    except ToolkitError as exc:
        assert "manifest not found" in str(exc), exc  # the one clean refusal a half-done install may cause
        return False
    return True


def test_export_killed_mid_install_leaves_the_old_artifact_or_none(tiny_checkpoint, other_checkpoint, tmp_path):
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint

    out = tmp_path / "unet.onnx"
    export = ["export", "--checkpoint", other_checkpoint, "--format", "onnx", "--no-verify", "--out", out]
    export_checkpoint(tiny_checkpoint, ExportRequest(format="onnx", out=out, gate=None), log=lambda _: None)
    old = _pair(out)
    rng = np.random.default_rng(7)

    timed = _start(tmp_path, *export, hold="unet.onnx:1")  # also: how long an export takes to reach its install
    began = time.monotonic()
    timed.wait_for_hold()
    to_install = time.monotonic() - began
    timed.kill()
    assert _pair(out) == {**old, manifest_path_for(out).name: None}  # the old artifact, bytes intact; no manifest
    assert not _usable(out)

    export_checkpoint(tiny_checkpoint, ExportRequest(format="onnx", out=out, gate=None), log=lambda _: None)
    assert _usable(out) and _temporaries(tmp_path) == []  # a rerun restores a pair and clears the killed temporary
    old = _pair(out)  # (exports are not byte-reproducible: MindSpore numbers its ONNX nodes per process)

    for delay in rng.uniform(0.2, 1.1, size=2) * to_install:  # random kills, most before the install
        child = _start(tmp_path, *export)
        time.sleep(float(delay))
        child.kill()
        now = _pair(out)
        assert now == old or now[manifest_path_for(out).name] is None or _usable(out), now

    child = _start(tmp_path, *export, hold="unet.onnx.json:1")
    child.wait_for_hold()
    child.kill()
    assert _pair(out)[out.name] != old[out.name] and _pair(out)[manifest_path_for(out).name] is None
    assert not _usable(out)  # the new artifact is in place, its manifest not yet: never paired with the old one

    export_checkpoint(other_checkpoint, ExportRequest(format="onnx", out=out, gate=None), log=lambda _: None)
    assert _usable(out) and _temporaries(tmp_path) == []


# ---- Ctrl-C and SIGTERM: stop cleanly ------------------------------------------------------------------
STOP_LINE = "interrupted at step {}; checkpoint written; continue with --resume"


def _stop_mid_run(tmp: Path, run: Path, number: int, *args: str) -> int:
    """Start `train ARGS`, send signal `number` a few logged steps in; returns the exit code after checking the
    one line and the checkpoint written at the step reached (no regular checkpoint is due before the end)."""
    target = max((record["step"] for record in _logged(run)), default=0) + 3
    child = _start(tmp, "train", "--out", run, *args)
    child.wait_until(lambda: bool(_logged(run)) and _logged(run)[-1]["step"] >= target, f"step {target}")
    child.process.send_signal(number)
    code = child.process.wait(timeout=START_TIMEOUT)
    from ms_ddpm.train.checkpoint import load_checkpoint

    step = load_checkpoint(run).step
    assert step == _logged(run)[-1]["step"] >= target  # the step under way when the signal came was finished
    lines = [line for line in child.stderr.read_text().splitlines() if line.strip()]
    assert lines[-1] == STOP_LINE.format(step) and "Traceback" not in child.stderr.read_text(), lines[-5:]
    assert _temporaries(run / "checkpoints") == []
    return code


def test_sigint_and_sigterm_stop_training_with_a_checkpoint_and_resume_ends_as_an_uninterrupted_run(tmp_path):
    run = tmp_path / "run"
    args = [*TRAIN[:TRAIN.index("--checkpoint-every")], "--checkpoint-every", str(STEPS), *TRAIN[TRAIN.index("--log-every"):]]
    # 130 for SIGINT; but MindSpore installs its own SIGINT handler whenever a compiled graph runs, one that sends
    # SIGTERM to the process (strace: kill(self, SIGTERM)), so a Ctrl-C landing inside a step exits 143.
    assert _stop_mid_run(tmp_path, run, signal.SIGINT, *args) in (130, 143)
    assert _stop_mid_run(tmp_path, run, signal.SIGTERM, "--resume") == 143

    _finish_and_compare_with_an_uninterrupted_run(run, tmp_path / "straight")


def test_ctrl_c_while_sample_writes_its_grid_leaves_no_file(tiny_checkpoint, tmp_path):
    """Held just before the grid's rename (the fault-injection plug-in), then Ctrl-C: one line, 130, no file."""
    out = tmp_path / "grid.png"
    child = _start(tmp_path, "sample", "--checkpoint", tiny_checkpoint, "--n", "2", "--out", out, hold="grid.png:1")
    child.wait_for_hold()
    child.process.send_signal(signal.SIGINT)
    assert child.process.wait(timeout=60) == 130
    lines = [line for line in child.stderr.read_text().splitlines() if line.strip() and HOLD_BEFORE_RENAME not in line]
    assert lines == ["error: interrupted; no partial output was written"], lines
    assert list(tmp_path.glob("grid*")) == [] and _temporaries(tmp_path) == []
