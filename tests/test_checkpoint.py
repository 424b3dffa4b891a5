"""Checkpoints: round trip, atomic writes, resume equivalence, and refusal of corrupt/mismatched files."""
import dataclasses

import numpy as np
import pytest

from conftest import tiny_config
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.train import trainer as trainer_module
from ms_ddpm.train.checkpoint import load_checkpoint, load_model
from ms_ddpm.train.data import load_images, to_model_range


@pytest.fixture(scope="module")
def digits8():
    return to_model_range(load_images("digits", 8, 1))[:256]


def _config(**train):
    config = tiny_config()
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train))


def test_checkpoint_round_trip_keeps_weights_config_and_step(tmp_path, digits8):
    config = _config(steps=2, checkpoint_every=1, ema_decay=0.9, sample_every=2)
    result = trainer_module.train(config, digits8, tmp_path, show_progress=False)
    assert (tmp_path / "samples" / "step-000002.png").is_file()  # the periodic sample grid
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.config == config and loaded.step == 2
    assert set(loaded.ema_weights) == set(loaded.weights)
    assert {"global_step", "beta1_power"} <= set(loaded.optimizer_state)
    assert (tmp_path / "checkpoints" / "config.json").is_file()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files left
    net, _ = load_model(tmp_path)  # a run directory resolves to its latest checkpoint
    for param in net.trainable_params():
        assert np.array_equal(param.asnumpy(), loaded.ema_weights[param.name])


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, digits8, monkeypatch):
    config = _config(steps=4, checkpoint_every=2, ema_decay=0.9)
    straight = trainer_module.train(config, digits8, tmp_path / "a", show_progress=False)

    original_save = trainer_module.save_checkpoint

    def save_then_crash(*args, **kwargs):
        original_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated crash right after the step-2 checkpoint")

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        trainer_module.train(config, digits8, tmp_path / "b", show_progress=False)
    monkeypatch.setattr(trainer_module, "save_checkpoint", original_save)
    assert load_checkpoint(tmp_path / "b").step == 2
    resumed = trainer_module.train(config, digits8, tmp_path / "b", resume=True, show_progress=False)

    assert resumed.steps_run == 2
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for table in ("weights", "ema_weights", "optimizer_state"):
        for name, value in getattr(a, table).items():
            assert np.allclose(value, getattr(b, table)[name], atol=1e-6), (table, name)


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:200])
    with pytest.raises(ToolkitError, match="corrupt or unreadable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(ToolkitError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(ToolkitError, match="no latest.ckpt"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_fit_the_config_are_refused(tiny_checkpoint):
    from ms_ddpm.runtime.config import ModelConfig
    from ms_ddpm.train.checkpoint import load_weights_into
    from ms_ddpm.train.model import build_unet

    weights = load_checkpoint(tiny_checkpoint).weights
    with pytest.raises(ToolkitError, match="does not match the model config"):
        load_weights_into(build_unet(ModelConfig(image_size=8, dim=12, dim_mults=(1, 2))), weights, tiny_checkpoint)
