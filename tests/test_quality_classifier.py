"""The quality metric's classifier: trained with MindSpore, exported to ONNX, run by onnxruntime."""
import json
import re
import shutil

import numpy as np

from conftest import assert_clean_error, run_cli

from ms_ddpm.bench.quality import FeatureModel
from ms_ddpm.train.data import load_labeled_images


def test_classifier_trains_and_exports_logits_and_features(tmp_path):
    from ms_ddpm.train.classifier import FEATURES, train_classifier

    out = tmp_path / "classifier.onnx"
    info = train_classifier(out, "digits", image_size=8, steps=60, batch=64, lr=2e-3, hflip=True, log=lambda line: None)
    assert info["classes"] == 10 and info["test_images"] + info["train_images"] == 1797
    assert info["test_accuracy"] > 0.5  # 60 steps already learn most digits
    assert json.loads((tmp_path / "classifier.onnx.json").read_text())["test_accuracy"] == info["test_accuracy"]
    images, labels = load_labeled_images("digits", 8)
    logits, features = FeatureModel(out)(images[:37])
    assert logits.shape == (37, 10) and features.shape == (37, FEATURES)
    assert np.all(features >= 0)  # post-ReLU


def test_quality_runs_from_another_folder_with_relative_paths(tiny_checkpoint, tmp_path):
    """Relative --checkpoint and --out against the caller's folder; the default scratch folder leaves nothing; the
    report records paths relative to that folder, with the date and the CPU."""
    shutil.copy(tiny_checkpoint, tmp_path / "tiny.ckpt")
    result = run_cli("quality", "--checkpoint", "tiny.ckpt", "--out", "q", "--n", "8", "--classifier-steps", "20",
                     "--rows", "ddpm:10,ddim:5:eta=1,dpmpp-sde:5,dpmpp3m:3", "--seeds", "0,1", "--resamples", "10",
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "q.json", "q.md", "tiny.ckpt"]
    report = json.loads((tmp_path / "q.json").read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == ["DDPM-10", "DDIM-5 (eta 1)", "DPM-Solver++(2M) SDE-5", "DPM-Solver++(3M)-3"]
    assert all(np.isfinite(r["fd"]) and r["fd"] >= 0 for r in rows + report["baselines"])
    assert [r["n"] for r in rows] == [16] * 4
    assert rows[0]["difference"] == rows[0]["low"] == rows[0]["high"] == 0.0
    assert all(r["low"] <= r["difference"] <= r["high"] for r in rows)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == sorted(f"{r['picture'][2:]}" for r in rows)
    assert "](q/ddpm-10.png)" in (tmp_path / "q.md").read_text()
    assert report["checkpoint"] == "tiny.ckpt" and report["machine"]["cpu"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", report["started"]), report["started"]  # the date it began
    for text in ((tmp_path / "q.json").read_text(), (tmp_path / "q.md").read_text()):
        assert str(tmp_path) not in text and "/tmp/" not in text


def test_quality_path_errors_come_before_any_work(tiny_checkpoint, tmp_path):
    shutil.copy(tiny_checkpoint, tmp_path / "tiny.ckpt")
    assert_clean_error(run_cli("quality", "--checkpoint", "nope", cwd=tmp_path), str(tmp_path / "nope"))
    assert_clean_error(run_cli("quality", "--checkpoint", "tiny.ckpt", "--work", "scratch", "--classifier", "c.onnx",
                               cwd=tmp_path), "classifier not found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.ckpt"]
