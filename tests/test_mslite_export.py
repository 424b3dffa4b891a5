"""`export --format mslite` end to end through the CLI: gate pass and fail, runtime sampling on Lite, and the
same-noise check against the MindSpore reference. Lite always runs in child processes here (pytest has MindSpore)."""
import json
import platform
import subprocess
import sys

import pytest

from conftest import REPO, assert_clean_error, checkpoint_with_changed_weight, run_cli

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                                reason="the MindSpore Lite bridge is built from an x86_64 Linux wheel")


@pytest.fixture(scope="module")
def lite_artifact(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("lite") / "unet.lite.mindir"
    result = run_cli("export", "--checkpoint", tiny_checkpoint, "--format", "mslite", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gate: PASS" in result.stdout + result.stderr
    return out


def test_lite_export_carries_a_verified_manifest(lite_artifact):
    manifest = json.loads(lite_artifact.with_name(lite_artifact.name + ".json").read_text())
    assert manifest["format"] == "mslite" and manifest["batch"] == {"policy": "dynamic"}
    assert manifest["verification"]["passed"] and manifest["verification"]["atol"] == 2e-3


def test_lite_gate_fails_against_a_model_with_one_weight_changed(lite_artifact, tiny_checkpoint, tmp_path):
    changed = checkpoint_with_changed_weight(tiny_checkpoint, tmp_path / "changed.ckpt", 1.05)
    result = run_cli("verify", lite_artifact, "--checkpoint", changed)
    assert_clean_error(result, "does not compute", code=1)
    assert "gate: FAIL" in result.stdout


def test_runtime_samples_on_lite_without_mindspore(lite_artifact, tmp_path):
    out = tmp_path / "grid.png"
    code = ("import sys; from ms_ddpm.runtime import Sampler; from ms_ddpm.runtime.images import save_grid; "
            f"save_grid({str(out)!r}, Sampler.load({str(lite_artifact)!r}, 'mslite').sample(4, 'ddim', 5, seed=0)); "
            "print('mindspore loaded:', 'mindspore' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mindspore loaded: False" in result.stdout and out.is_file()
    cli = run_cli("sample", "--artifact", lite_artifact, "--backend", "mslite", "--scheduler", "dpmpp", "--steps", "4",
                  "--n", "4", "--out", tmp_path / "cli.png")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert (tmp_path / "cli.png").is_file()


def test_lite_matches_the_mindspore_reference_end_to_end(lite_artifact, tiny_checkpoint):
    result = run_cli("verify", lite_artifact, "--checkpoint", tiny_checkpoint, "--end-to-end")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "end-to-end DDPM" in result.stdout + result.stderr and "PASS" in result.stdout + result.stderr
