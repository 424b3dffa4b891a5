"""The one slow-but-real test: train a tiny U-Net on the embedded digits and see the loss fall."""
import json

import numpy as np
import pytest

from conftest import run_cli


@pytest.mark.slow
def test_training_on_digits_clearly_reduces_the_loss(tmp_path):
    run = tmp_path / "runs" / "digits"  # a run directory whose parent does not exist yet, like `make demo`'s
    result = run_cli("train", "--out", run, "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
                     "--steps", "300", "--batch-size", "32", "--lr", "2e-3", "--checkpoint-every", "100", "--log-every", "5",
                     "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    first, last = np.mean(losses[:10]), np.mean(losses[-30:])
    assert last < 0.6 * first, (first, last)
    sampled = run_cli("sample", "--checkpoint", run, "--n", "4", "--out", tmp_path / "s.png")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
