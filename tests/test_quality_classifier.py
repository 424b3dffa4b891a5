"""The quality metric's classifier: trained with MindSpore, exported to ONNX, run by onnxruntime."""
import json

import numpy as np

from ms_ddpm.bench.quality import FeatureModel, labeled_images


def test_classifier_trains_and_exports_logits_and_features(tmp_path):
    from ms_ddpm.bench.classifier import FEATURES, train_classifier

    out = tmp_path / "classifier.onnx"
    info = train_classifier(out, "digits", image_size=8, steps=60, batch=64, lr=2e-3, hflip=True, log=lambda line: None)
    assert info["classes"] == 10 and info["test_images"] + info["train_images"] == 1797
    assert info["test_accuracy"] > 0.5  # 60 steps already learn most digits
    assert json.loads((tmp_path / "classifier.onnx.json").read_text())["test_accuracy"] == info["test_accuracy"]
    images, labels = labeled_images("digits", 8)
    logits, features = FeatureModel(out)(images[:37])
    assert logits.shape == (37, 10) and features.shape == (37, FEATURES)
    assert np.all(features >= 0)  # post-ReLU
