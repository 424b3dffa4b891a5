"""Bad input to `train`, `sample` and `noise` through the CLI: one-line error, exit 2, no output left."""
import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import assert_clean_error, run_cli

TINY = ["--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--timesteps", "10", "--steps", "2", "--batch-size", "4"]


def _bad_idx(tmp_path, body: bytes):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(body)
    return path


@pytest.mark.parametrize("case", ["missing", "empty-folder", "bad-magic", "truncated-idx", "bad-size", "bad-schedule", "bad-gzip"])
def test_train_bad_input(tmp_path, case):
    header = struct.pack(">HBBIII", 0, 8, 3, 5, 8, 8)
    cases = {  # each builds its input lazily, so only the case under test creates files
        "missing": lambda: (tmp_path / "nope", [], "data path not found"),
        "empty-folder": lambda: (tmp_path, [], "no images"),
        "bad-magic": lambda: (_bad_idx(tmp_path, b"\x00\x00\x09\x03" + header[4:] + bytes(320)), [], "bad magic"),
        "truncated-idx": lambda: (_bad_idx(tmp_path, header + bytes(100)), [], "truncated"),
        "bad-size": lambda: ("digits", ["--image-size", "9"], "not divisible by 2"),
        "bad-schedule": lambda: ("digits", ["--schedule", "exponential"], "unknown schedule"),
        "bad-gzip": lambda: (_bad_idx(tmp_path, gzip.compress(header)[:-6]), [], "cannot read IDX"),
    }
    data, extra, fragment = cases[case]()
    out = tmp_path / "run"
    result = run_cli("train", "--data", data, "--out", out, *TINY, *extra, "--no-progress")
    assert_clean_error(result, fragment)
    assert not (out / "checkpoints").exists()


def test_corrupt_checkpoint_on_resume_and_sample(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.ckpt").write_bytes(np.random.default_rng(0).bytes(500))
    assert_clean_error(run_cli("train", "--out", run, "--resume", "--steps", "4"), "corrupt or unreadable checkpoint")
    out = tmp_path / "grid.png"
    assert_clean_error(run_cli("sample", "--checkpoint", run, "--out", out), "corrupt or unreadable checkpoint")
    assert not out.exists()


def test_resume_refuses_conflicting_flags(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.ckpt").write_bytes(tiny_checkpoint.read_bytes())
    assert_clean_error(run_cli("train", "--out", run, "--resume", "--dim", "16"), "conflicting flag(s): --dim")


def test_sample_and_noise_bad_input(tiny_checkpoint, tmp_path):
    assert_clean_error(run_cli("sample", "--out", tmp_path / "x.png"), "exactly one of --checkpoint")
    assert_clean_error(run_cli("sample", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "no" / "x.png"),
                       "output directory does not exist")
    assert_clean_error(run_cli("noise", tmp_path / "missing.png", "--out", tmp_path / "n.png"), "image not found")
    Image.new("RGB", (40, 30)).save(tmp_path / "cat.png")
    assert_clean_error(run_cli("noise", tmp_path / "cat.png", "--t", "0,250"), "0..199")
    assert not (tmp_path / "n.png").exists()


def test_sample_and_noise_write_their_pictures(tiny_checkpoint, tmp_path):
    result = run_cli("sample", "--checkpoint", tiny_checkpoint, "--n", "4", "--out", tmp_path / "g.png",
                     "--gif", tmp_path / "g.gif", "--npz", tmp_path / "g.npz")
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(tmp_path / "g.npz", allow_pickle=False) as archive:
        assert archive["images"].shape == (4, 8, 8, 1) and archive["images"].dtype == np.uint8
    assert Image.open(tmp_path / "g.gif").n_frames > 1
    Image.new("RGB", (40, 30), (200, 100, 50)).save(tmp_path / "cat.png")
    result = run_cli("noise", tmp_path / "cat.png", "--image-size", "32", "--out", tmp_path / "strip.png")
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "strip.png").size[0] > 5 * 32


def test_epochs_are_an_alternative_to_steps(tmp_path):
    """--epochs N trains N x (dataset size // batch size) steps; with --steps too, or below 1, it is one error."""
    data = tmp_path / "ten.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 255, (10, 8, 8, 1), dtype=np.uint8))
    tiny = [arg for arg in TINY if arg not in ("--steps", "2")]
    for extra, fragment in ((["--steps", "2", "--epochs", "1"], "--steps and --epochs are alternatives"),
                            (["--epochs", "0"], "--epochs must be >= 1")):
        assert_clean_error(run_cli("train", "--data", data, "--out", tmp_path / "bad", *tiny, *extra), fragment)
    assert not (tmp_path / "bad").exists()
    result = run_cli("train", "--data", data, "--out", tmp_path / "run", *tiny, "--epochs", "2", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained 4 steps" in result.stdout  # 2 epochs of 10 // 4 = 2 batches
