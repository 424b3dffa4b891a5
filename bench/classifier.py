"""The quality metric's feature extractor: a small CNN (conv3x3 32 -> conv3x3/2 64 -> conv3x3/2 128 ->
dense 128 = features -> dense classes = logits, ReLU between) trained with MindSpore on the model's own
data and exported to ONNX with outputs `logits` and `features`, so the metric runs on onnxruntime.

    python -m ms_ddpm.bench.classifier OUT.onnx [--data digits] [--image-size 8] [--steps 800] [--hflip]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from ..runtime.errors import run_main
from ..runtime.files import atomic_path, write_text_atomic

from .harness import reply

FEATURES = 128


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


def train_classifier(out: Path, data: str, image_size: int, steps: int, batch: int, lr: float, hflip: bool,
                     seed: int = 0, log=print) -> Dict[str, Any]:
    import mindspore as ms
    from mindspore import Tensor, nn

    from ..train.data import to_model_range
    from .quality import labeled_images, split_indices

    images, labels = labeled_images(data, image_size)
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
    """ONNX with a dynamic batch; outputs renamed to logits and features, checked by onnxruntime."""
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ms_ddpm.bench.classifier", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    for option, default in (("--data", "digits"), ("--image-size", 8), ("--steps", 800), ("--batch", 64), ("--lr", 2e-3)):
        parser.add_argument(option, type=type(default), default=default)
    parser.add_argument("--hflip", action="store_true", help="Train on randomly mirrored images too.")
    reply(train_classifier(**vars(parser.parse_args()), log=lambda line: print(line, file=sys.stderr, flush=True)))


if __name__ == "__main__":
    run_main(main)
