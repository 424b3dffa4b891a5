"""Data-parallel training under msrun: 2 CPU workers match single-process training; clear errors on bad launches."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, assert_clean_error, run_cli, tiny_config
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.train import trainer as trainer_module
from ms_ddpm.train.checkpoint import load_checkpoint
from ms_ddpm.train.data import load_images, to_model_range
from ms_ddpm.train.distributed import RANK_WEIGHTS_ENV, DistributedContext, join_msrun_cluster
from ms_ddpm.train.launch import worker_arguments

TINY = ["--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--timesteps", "10", "--batch-size", "8"]
LAUNCH_TIMEOUT = 150  # seconds: two workers plus a scheduler on 2 busy CPU cores


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _msrun_logs(run: Path) -> str:
    """Every log msrun wrote for the run, for failure messages."""
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                     for log in sorted((run / "msrun").glob("*.log")))


def _launch_two_workers(run: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`cli.py train --workers 2 ...` under a deadline; on a timeout, stop msrun (and so its workers) with SIGINT."""
    command = [sys.executable, str(REPO / "cli.py"), "train", "--out", str(run), *args, "--workers", "2",
               "--master-port", str(_free_port()), "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "GLOG_v": "3", **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"2-worker training took over {LAUNCH_TIMEOUT} s\n{stderr[-2000:]}\n{_msrun_logs(run)}")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, f"{stdout[-2000:]}\n{stderr[-2000:]}\n{_msrun_logs(run)}"
    return result


def _assert_close(distributed: dict, single: dict, what: str) -> None:
    """Same names, same values to float rounding (summation order differs across workers)."""
    assert set(distributed) == set(single), what
    for name, value in single.items():
        np.testing.assert_allclose(distributed[name], value, rtol=1e-4, atol=1e-6, err_msg=f"{what}: {name}")


def test_two_workers_equal_each_other_and_single_process_training(tmp_path):
    run, ranks = tmp_path / "run", tmp_path / "ranks"
    ranks.mkdir()
    result = _launch_two_workers(run, *TINY, "--steps", "3", env={RANK_WEIGHTS_ENV: str(ranks)})
    assert "2 workers finished" in result.stdout

    with np.load(ranks / "rank0.npz") as rank0, np.load(ranks / "rank1.npz") as rank1:
        assert rank0.files == rank1.files
        for name in rank0.files:
            np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
        final_weights = {name: rank0[name] for name in rank0.files}

    distributed = load_checkpoint(run)  # written by rank 0 alone: one log line per logged step, not one per rank
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [3]
    _assert_close(distributed.weights, final_weights, "rank 0's checkpoint vs its own final weights")

    images = to_model_range(load_images("digits", 8, 1))  # what the CLI trained on
    single = trainer_module.train(distributed.config, images, tmp_path / "single", show_progress=False)
    reference = load_checkpoint(single.checkpoint)
    _assert_close(distributed.weights, reference.weights, "weights")
    _assert_close(distributed.optimizer_state, reference.optimizer_state, "Adam state")
    assert log[-1]["loss"] == pytest.approx(single.last_loss, rel=1e-5)  # the loss is averaged over the workers


def test_two_workers_resume_a_single_device_run_as_one_device_would(tmp_path):
    """The same resume logic: 2 workers continue a 1-device checkpoint exactly as a 1-device --resume does."""
    images = to_model_range(load_images("digits", 8, 1))
    config = tiny_config()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=8, steps=2))
    trainer_module.train(config, images, tmp_path / "run", show_progress=False)
    shutil.copytree(tmp_path / "run", tmp_path / "single")
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=4))
    single = trainer_module.train(longer, images, tmp_path / "single", resume=True, show_progress=False)

    _launch_two_workers(tmp_path / "run", "--resume", "--steps", "4")
    resumed = load_checkpoint(tmp_path / "run")
    assert resumed.step == 4
    _assert_close(resumed.weights, load_checkpoint(single.checkpoint).weights, "weights")
    _assert_close(resumed.optimizer_state, load_checkpoint(single.checkpoint).optimizer_state, "Adam state")


def test_launch_errors_are_one_line(tmp_path):
    out = tmp_path / "run"
    assert_clean_error(run_cli("train", "--out", out, *TINY, "--distributed"), "needs MindSpore's msrun launcher")
    assert not out.exists()
    assert_clean_error(run_cli("train", "--out", out, *TINY, "--workers", "3"), "batch size 8 is not divisible by 3 workers")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_clean_error(run_cli("train", "--out", out, *TINY, "--workers", "2", "--master-port", port),
                           f"master port {port} is already in use")
    assert not (out / "checkpoints").exists() and not (out / "msrun").exists()


def test_a_worker_error_comes_back_as_the_launcher_one_line(tmp_path):
    """Workers that fail before joining stop the whole msrun job at once; their error is the launcher's."""
    out = tmp_path / "run"
    result = run_cli("train", "--out", out, *TINY, "--data", tmp_path / "missing", "--workers", "2",
                     "--master-port", _free_port(), timeout=LAUNCH_TIMEOUT)
    assert_clean_error(result, "data path not found", "worker_0.log")


def test_a_worker_refuses_a_batch_it_cannot_split_before_joining(monkeypatch):
    for name, value in {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "4", "MS_SCHED_HOST": "127.0.0.1",
                        "MS_SCHED_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ToolkitError, match="batch size 6 is not divisible by 4 workers"):
        join_msrun_cluster(6)


def test_each_rank_takes_its_contiguous_slice_of_the_global_batch():
    batch = np.arange(8 * 3).reshape(8, 3)
    t = np.arange(8)
    slices = [DistributedContext(rank, 4).shard(batch, t) for rank in range(4)]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in slices]), batch)
    np.testing.assert_array_equal(slices[2][1], [4, 5])
    assert DistributedContext().is_main and not DistributedContext(1, 4).is_main
    np.testing.assert_array_equal(DistributedContext().shard(batch)[0], batch)  # one device: the whole batch


def test_workers_run_the_same_command_without_the_launcher_options():
    argv = ["train", "--out", "r", "--workers", "2", "--master-port=9000", "--steps", "5"]
    assert worker_arguments(argv) == ["train", "--out", "r", "--steps", "5", "--distributed"]
