"""Bad input to `export` and `verify`: a one-line error, exit 2, and nothing written."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli, tiny_config
from ms_ddpm.runtime.manifest import manifest_path_for


def _assert_nothing_written(directory: Path) -> None:
    assert not directory.exists() or list(directory.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["--format", "tflite"], "unknown format 'tflite'"),
    (["--format", "onnx", "--batch", "0"], "--batch must be"),
    (["--format", "onnx", "--batch", "two"], "--batch must be"),
    (["--format", "onnx", "--atol", "-1"], "--atol"),
    (["--format", "mindir", "--opset", "13"], "--opset applies to ONNX only"),
])
def test_export_rejects_bad_flags(tiny_checkpoint, tmp_path, args, fragment):
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("export", "--checkpoint", tiny_checkpoint, "--out", out / "unet.bin", *args)
    assert_clean_error(result, fragment)
    _assert_nothing_written(out)


def test_export_rejects_an_output_in_a_missing_directory(tiny_checkpoint, tmp_path):
    result = run_cli("export", "--checkpoint", tiny_checkpoint, "--format", "onnx", "--out", tmp_path / "no" / "unet.onnx")
    assert_clean_error(result, "output directory does not exist")
    _assert_nothing_written(tmp_path / "no")


def test_export_rejects_an_output_path_that_is_a_directory(tiny_checkpoint, tmp_path):
    result = run_cli("export", "--checkpoint", tiny_checkpoint, "--format", "onnx", "--out", tmp_path)
    assert_clean_error(result, "output path is a directory")
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("content, fragment", [(None, "checkpoint not found"), (b"not a checkpoint" * 64, "corrupt")])
def test_export_rejects_a_missing_or_corrupt_checkpoint(tmp_path, content, fragment):
    checkpoint = tmp_path / "model.ckpt"
    if content is not None:
        checkpoint.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "--out", out / "unet.onnx")
    assert_clean_error(result, fragment)
    _assert_nothing_written(out)


def test_export_rejects_a_checkpoint_whose_config_does_not_match_its_weights(tiny_checkpoint, tmp_path):
    from ms_ddpm.train.checkpoint import load_model, save_checkpoint

    net = load_model(tiny_checkpoint)[0]
    config = tiny_config()
    wider = dataclasses.replace(config, model=dataclasses.replace(config.model, dim=16))
    mismatched = save_checkpoint(tmp_path / "mismatched.ckpt", wider, step=0, net=net)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("export", "--checkpoint", mismatched, "--format", "onnx", "--out", out / "unet.onnx")
    assert_clean_error(result, "does not match the model config")
    _assert_nothing_written(out)


@pytest.fixture(scope="module")
def exported_pair(tiny_checkpoint, tmp_path_factory) -> Path:
    """An unverified ONNX export (the cheapest real artifact + manifest pair)."""
    out = tmp_path_factory.mktemp("pair") / "unet.onnx"
    result = run_cli("export", "--checkpoint", tiny_checkpoint, "--format", "onnx", "--out", out, "--no-verify")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _pair_with(artifact_bytes: bytes, exported_pair: Path, directory: Path) -> Path:
    artifact = directory / "unet.onnx"
    artifact.write_bytes(artifact_bytes)
    shutil.copy(manifest_path_for(exported_pair), manifest_path_for(artifact))
    return artifact


@pytest.mark.parametrize("damage", ["truncated", "not onnx"])
def test_verify_rejects_a_truncated_or_non_onnx_file(exported_pair, tiny_checkpoint, tmp_path, damage):
    data = exported_pair.read_bytes()
    artifact = _pair_with(data[: len(data) // 2] if damage == "truncated" else b"hello, world\n", exported_pair, tmp_path)
    assert_clean_error(run_cli("verify", artifact, "--checkpoint", tiny_checkpoint), "corrupt or unreadable ONNX artifact")


def test_verify_rejects_an_artifact_without_its_manifest(exported_pair, tiny_checkpoint, tmp_path):
    artifact = tmp_path / "unet.onnx"
    shutil.copy(exported_pair, artifact)
    assert_clean_error(run_cli("verify", artifact, "--checkpoint", tiny_checkpoint), "manifest not found")


def test_verify_rejects_a_missing_artifact(tiny_checkpoint, tmp_path):
    assert_clean_error(run_cli("verify", tmp_path / "nothing.onnx", "--checkpoint", tiny_checkpoint), "artifact not found")
