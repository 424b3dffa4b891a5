"""The quality metric's feature extractor: a small CNN (conv3x3 32 -> conv3x3/2 64 -> conv3x3/2 128 ->
dense 128 = features -> dense classes = logits, ReLU between) trained with MindSpore on the model's own
data and exported to ONNX with outputs `logits` and `features`, so the metric (bench/quality.py) runs on
onnxruntime. `ms-ddpm quality` trains it in a child process, into its --work folder."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np

from ..runtime.files import atomic_path, write_text_atomic

from . import prepare_mindspore
from .data import load_labeled_images, to_model_range

FEATURES = 128


def split_indices(n: int, seed: int = 0, test_fraction: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """The classifier's fixed train/test split."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - test_fraction)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def build_classifier(channels: int, image_size: int, classes: int, width: int = 32):
    from mindspore import nn, ops

    side = -(-(-(-image_size // 2)) // 2)  # two stride-2 convs with padding 1: ceil(ceil(s/2)/2)

    class Classifier(nn.Cell):
        def __init__(self):
            super().__init__()
            conv = lambda i, o, s: nn.Conv2d(i, o, 3, stride=s, pad_mode="pad", padding=1, has_bias=True)  # noqa: E731
            self.c1, self.c2, self.c3 = conv(channels, width, 1), conv(width, 2 * width, 2), conv(2 * width, 4 * width, 2)
            self.flat = 4 * width * side * side
            self.fc = nn.Dense(self.flat, FEATURES)
            self.head = nn.Dense(FEATURES, classes)
            self.relu = nn.ReLU()

        def construct(self, x):
            h = self.relu(self.c3(self.relu(self.c2(self.relu(self.c1(x))))))
            features = self.relu(self.fc(ops.reshape(h, (-1, self.flat))))
            return self.head(features), features

    return Classifier()


def train_classifier(out: Path, data: str, image_size: int, steps: int = 800, batch: int = 64, lr: float = 2e-3,
                     hflip: bool = False, seed: int = 0, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train on `data` (labelled: digits or IDX), write OUT (ONNX) and OUT.json (settings, test accuracy)."""
    prepare_mindspore()
    import mindspore as ms
    from mindspore import Tensor, nn

    images, labels = load_labeled_images(data, image_size)
    x_all = to_model_range(images)
    train_idx, test_idx = split_indices(len(images), seed)
    classes = int(labels.max()) + 1
    ms.set_seed(seed)
    net = build_classifier(x_all.shape[1], image_size, classes)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=nn.cosine_decay_lr(lr * 0.01, lr, steps, 1, steps))
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def forward(x, y):
        return loss_fn(net(x)[0], y)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)

    @ms.jit
    def step(x, y):
        loss, grads = grad_fn(x, y)
        optimizer(grads)
        return loss

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for index in range(steps):
        chosen = rng.choice(train_idx, batch)
        x = x_all[chosen]
        if hflip:
            flip = rng.random(batch) < 0.5
            x = np.where(flip[:, None, None, None], x[..., ::-1], x)
        loss = step(Tensor(np.ascontiguousarray(x)), Tensor(labels[chosen].astype(np.int32)))
        if (index + 1) % 200 == 0 or index + 1 == steps:
            log(f"classifier step {index + 1}/{steps}: loss {float(loss.asnumpy()):.4f}")
    net.set_train(False)
    accuracy = lambda x: float((net(Tensor(np.ascontiguousarray(x)))[0].asnumpy().argmax(1)  # noqa: E731
                                == labels[test_idx]).mean())
    export_onnx(net, out, x_all.shape[1], image_size)
    info = {"data": data, "image_size": image_size, "classes": classes, "features": FEATURES, "steps": steps,
            "batch": batch, "lr": lr, "hflip": hflip, "seed": seed, "train_images": len(train_idx),
            "test_images": len(test_idx), "test_accuracy": accuracy(x_all[test_idx]),
            "test_accuracy_mirrored": accuracy(x_all[test_idx][..., ::-1]),
            "train_seconds": round(time.perf_counter() - started, 1), "outputs": ["logits", "features"]}
    write_text_atomic(f"{out}.json", json.dumps(info, indent=2) + "\n")
    return info


def export_onnx(net, out: Path, channels: int, image_size: int) -> None:
    """ONNX with a dynamic batch; outputs renamed to logits and features, checked by onnx.checker."""
    import tempfile

    import mindspore as ms
    import onnx
    from mindspore import Tensor

    with tempfile.TemporaryDirectory(prefix="classifier-export.") as work:
        raw = Path(work) / "classifier.onnx"
        ms.onnx.export(net, Tensor(np.zeros((2, channels, image_size, image_size), np.float32)), file_name=str(raw),
                       input_names=["x"], dynamic_axes={"x": {0: "batch"}})
        model = onnx.load(str(raw))
    renames = dict(zip([o.name for o in model.graph.output], ["logits", "features"]))
    for node in model.graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for output in model.graph.output:
        output.name = renames[output.name]
        output.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
