"""The bad-input matrix: one row per case, each run through the CLI in a fresh process.

Every row checks four things: a one-line `error: ...` naming the problem (no traceback), the exit code
(2; 1 only where the numeric gate itself fails), nothing written where the output would go, and the
inputs byte-for-byte untouched.

Cases the other test files already run through the CLI are not repeated here: missing files of every
kind (test_runtime, test_export_errors, test_cli_train), random bytes as an ONNX artifact (test_runtime)
or a checkpoint (test_cli_train), a truncated IDX file and an indivisible `train --image-size`
(test_cli_train), a manifest for another image size on ONNX (test_runtime), `--resume` with a model flag
(test_cli_train).
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
from PIL import Image

from conftest import LITE_PLATFORM, assert_clean_error, run_cli
from ms_ddpm.runtime.files import sha256_file
from ms_ddpm.runtime.manifest import manifest_path_for
from ms_ddpm.runtime.schedules import beta_schedule

TINY_TRAIN = ["--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--timesteps", "10", "--steps", "2",
              "--batch-size", "4", "--no-progress"]
UNWRITABLE = Path("/proc")  # exists and looks writable to root, yet no one can create files in it
LITE = pytest.mark.skipif(not LITE_PLATFORM, reason="MindSpore Lite's only PyPI wheel is x86_64 Linux")


@dataclass
class Case:
    """What a row builds from: its own input and output folders, and the shared tiny model files."""

    inputs: Path
    out: Path
    checkpoint: Path
    exports: Dict[str, Path]

    def damaged(self, source: Path, damage: str, name: Optional[str] = None) -> Path:
        """A copy of `source` among the inputs (as `name`), emptied, cut in half or replaced by random bytes."""
        data = source.read_bytes()
        content = {"empty": b"", "truncated": data[: len(data) // 2],
                   "random": np.random.default_rng(0).bytes(len(data))}[damage]
        path = self.inputs / (name or source.name)
        path.write_bytes(content)
        return path

    def artifact(self, fmt: str, damage: Optional[str] = None, edit: Optional[Callable[[dict], None]] = None) -> Path:
        """The artifact and its manifest among the inputs, the artifact damaged and/or the manifest edited."""
        source = self.exports[fmt]
        path = self.damaged(source, damage) if damage else self.inputs / source.name
        if not damage:
            path.write_bytes(source.read_bytes())
        manifest = json.loads(manifest_path_for(source).read_text())
        if edit is not None:
            edit(manifest)
        manifest_path_for(path).write_text(json.dumps(manifest))
        return self.seal(path)

    @staticmethod
    def seal(artifact: Path) -> Path:
        """Record the artifact's sha256 in its manifest, so that the loader, not the checksum, meets the damage."""
        manifest = json.loads(manifest_path_for(artifact).read_text())
        manifest["artifact_sha256"] = sha256_file(artifact)
        manifest_path_for(artifact).write_text(json.dumps(manifest))
        return artifact

    def sample(self, artifact: Path, *args: str, out: Optional[Path] = None) -> List:
        return ["sample", "--artifact", artifact, "--n", "2", "--scheduler", "ddim", "--steps", "2",
                "--out", out or self.out / "grid.png", *args]


Build = Callable[[Case], Sequence]
ROWS: List = []


def row(name: str, fragments: Sequence[str], code: int = 2, marks=()) -> Callable[[Build], Build]:
    """Register `build(case) -> CLI arguments` as one row of the matrix."""
    def register(build: Build) -> Build:
        ROWS.append(pytest.param(build, list(fragments), code, id=name, marks=marks))
        return build
    return register


# ---- damaged files: empty, truncated, random bytes ---------------------------------------------------
def _idx() -> bytes:
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    return struct.pack(">HBBIII", 0, 8, 3, *images.shape) + images.tobytes()


def _png(mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (12, 10), 77).save(buffer, format="PNG")
    return buffer.getvalue()


def _good(case: Case, name: str, data: bytes) -> Path:
    """A good file, outside the inputs, to damage into them."""
    path = case.out.parent / name
    path.write_bytes(data)
    return path


def _damaged_manifest(case: Case, damage: str) -> Path:
    artifact = case.artifact("onnx")
    case.damaged(manifest_path_for(case.exports["onnx"]), damage, manifest_path_for(artifact).name)
    return artifact


def _folder_with_damaged_image(case: Case, damage: str) -> Path:
    folder = case.inputs / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png())
    case.damaged(_good(case, "b.png", _png()), damage, "images/b.png")
    return folder


CHECKPOINT_DAMAGE = {"empty": "checkpoint is an empty file", "truncated": "corrupt or unreadable checkpoint"}
for damage, fragment in CHECKPOINT_DAMAGE.items():
    row(f"checkpoint-{damage}", [fragment])(
        lambda c, d=damage: ["sample", "--checkpoint", c.damaged(c.checkpoint, d), "--out", c.out / "grid.png"])
for damage in ("empty", "truncated"):
    row(f"onnx-{damage}", ["corrupt or unreadable ONNX artifact"])(lambda c, d=damage: c.sample(c.artifact("onnx", d)))
MANIFEST_DAMAGE = {"empty": "is not valid JSON", "truncated": "is not valid JSON", "random": "cannot read manifest"}
for damage, fragment in MANIFEST_DAMAGE.items():
    row(f"mindir-{damage}", ["corrupt or unreadable MindIR artifact"])(
        lambda c, d=damage: c.sample(c.artifact("mindir", d)))
    row(f"lite-{damage}", ["cannot load it as a cloud MindIR model"], marks=LITE)(
        lambda c, d=damage: c.sample(c.artifact("mslite", d)))
    row(f"manifest-{damage}", [fragment, "unet.onnx.json"])(lambda c, d=damage: c.sample(_damaged_manifest(c, d)))
    row(f"image-{damage}", ["cannot read image", "cat.png"])(
        lambda c, d=damage: ["noise", c.damaged(_good(c, "cat.png", _png("RGB")), d), "--out", c.out / "strip.png"])
    row(f"image-in-data-folder-{damage}", ["cannot read image", "b.png"])(
        lambda c, d=damage: ["train", "--data", _folder_with_damaged_image(c, d), "--out", c.out / "run", *TINY_TRAIN])
for damage in ("empty", "random"):
    row(f"idx-{damage}", ["IDX file", "train-images-idx3-ubyte"])(
        lambda c, d=damage: ["train", "--data", c.damaged(_good(c, "train-images-idx3-ubyte", _idx()), d),
                             "--out", c.out / "run", *TINY_TRAIN])


# ---- a manifest that parses but does not match its model -------------------------------------------
def _image_size(size: int) -> Callable[[dict], None]:
    def edit(manifest: dict) -> None:
        manifest["config"]["model"]["image_size"] = size
        for spec in (manifest["inputs"][0], manifest["outputs"][0]):
            spec["shape"][2:] = [size, size]
    return edit


def _channels(manifest: dict) -> None:
    manifest["config"]["model"]["channels"] = 3
    for spec in (manifest["inputs"][0], manifest["outputs"][0]):
        spec["shape"][1] = 3


def _timesteps(count: int, betas_too: bool = True) -> Callable[[dict], None]:
    def edit(manifest: dict) -> None:
        manifest["config"]["diffusion"]["timesteps"] = count
        if betas_too:
            manifest["betas"] = beta_schedule("linear", count).tolist()
    return edit


def _other_schedule(manifest: dict) -> None:
    manifest["betas"] = beta_schedule("cosine", len(manifest["betas"])).tolist()


row("manifest-channels-vs-onnx", ["does not match its manifest"])(lambda c: c.sample(c.artifact("onnx", edit=_channels)))
row("manifest-image-size-vs-mindir", ["rejected inputs of shape (2, 1, 16, 16)"])(
    lambda c: c.sample(c.artifact("mindir", edit=_image_size(16))))
row("manifest-image-size-vs-lite", ["does not match its manifest", "16"], marks=LITE)(
    lambda c: c.sample(c.artifact("mslite", edit=_image_size(16))))
row("manifest-T-vs-checkpoint", ["does not match the checkpoint", "diffusion.timesteps (20 vs 10)"])(
    lambda c: ["verify", c.artifact("onnx", edit=_timesteps(20)), "--checkpoint", c.checkpoint])
row("manifest-T-vs-its-betas", ["10 betas but config says T=20"])(
    lambda c: c.sample(c.artifact("onnx", edit=_timesteps(20, betas_too=False))))
row("manifest-betas-vs-its-schedule", ["not the linear schedule"])(
    lambda c: c.sample(c.artifact("onnx", edit=_other_schedule)))
row("manifest-image-size-indivisible", ["not divisible by 2"])(lambda c: c.sample(c.artifact("onnx", edit=_image_size(9))))


# ---- non-finite weights -----------------------------------------------------------------------------
def _poisoned_checkpoint(case: Case, value: float, where: str = "weights") -> Path:
    """The tiny checkpoint with one value of its weights (or of Adam's first moment) replaced."""
    from mindspore import Tensor, nn

    from ms_ddpm.train.checkpoint import load_model, save_checkpoint
    from ms_ddpm.train.run_paths import LATEST

    net, source = load_model(case.checkpoint)
    optimizer = nn.Adam(net.trainable_params()) if where == "optimizer" else None
    param = next(p for p in (optimizer.moment1 if optimizer else net.trainable_params()))
    data = param.asnumpy()
    data.flat[0] = value
    param.set_data(Tensor(data))
    folder = case.inputs / "run" / "checkpoints"
    folder.mkdir(parents=True)
    return save_checkpoint(folder / LATEST, source.config, 2, net, optimizer=optimizer)


def _poisoned_onnx(case: Case, value: float) -> Path:
    """The ONNX artifact with one weight of its last convolution replaced."""
    import onnx
    from onnx import numpy_helper

    artifact = case.artifact("onnx")
    model = onnx.load(str(artifact))
    weight = next(init for init in model.graph.initializer if init.name == "final_conv.1.weight")
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = value
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(artifact))
    return case.seal(artifact)


row("checkpoint-nan-weight-export", ["contains NaN or Inf"])(
    lambda c: ["export", "--checkpoint", _poisoned_checkpoint(c, np.nan), "--format", "onnx",
               "--out", c.out / "unet.onnx"])
row("checkpoint-inf-weight-sample", ["contains NaN or Inf"])(
    lambda c: ["sample", "--checkpoint", _poisoned_checkpoint(c, np.inf), "--out", c.out / "grid.png"])
row("checkpoint-nan-optimizer-state-resume", ["contains NaN or Inf", "opt."])(
    lambda c: ["train", "--out", _poisoned_checkpoint(c, np.nan, "optimizer").parent.parent, "--resume", "--steps", "4"])
row("onnx-nan-weight-gate", ["does not compute"], code=1)(
    lambda c: ["verify", _poisoned_onnx(c, np.nan), "--checkpoint", c.checkpoint])
row("onnx-inf-weight-sample", ["samples contain", "NaN/Inf"])(lambda c: c.sample(_poisoned_onnx(c, np.inf)))


# ---- wrong data shapes --------------------------------------------------------------------------------
def _rgb_folder(case: Case) -> Path:
    folder = case.inputs / "rgb"
    folder.mkdir()
    for index in range(2):
        Image.new("RGB", (10 + index, 9), (200, 10 * index, 30)).save(folder / f"{index}.png")
    return folder


def _npz(case: Case, images: np.ndarray) -> Path:
    path = case.inputs / "images.npz"
    np.savez(path, images=images)
    return path


row("rgb-folder-for-1-channel-model", ["colour image", "--channels 3"])(
    lambda c: ["train", "--data", _rgb_folder(c), "--out", c.out / "run", *TINY_TRAIN])
row("npz-of-mixed-sizes", ["cannot read .npz", "allow_pickle=False"])(
    lambda c: ["train", "--data", _npz(c, np.array([np.zeros((8, 8), np.uint8), np.zeros((9, 9), np.uint8)],
                                                   dtype=object)), "--out", c.out / "run", *TINY_TRAIN])
row("npz-with-2-channels", ["1 or 3 channels"])(
    lambda c: ["train", "--data", _npz(c, np.zeros((4, 8, 8, 2), np.uint8)), "--out", c.out / "run", *TINY_TRAIN])


# ---- outputs that cannot be written --------------------------------------------------------------------
def _a_file(case: Case) -> Path:
    path = case.inputs / "not-a-directory"
    path.write_text("a file\n")
    return path


row("output-in-unwritable-directory", ["output directory is not writable: /proc"])(
    lambda c: c.sample(c.artifact("onnx"), out=UNWRITABLE / "grid.png"))
row("output-under-a-file", ["output directory is not a directory"])(
    lambda c: c.sample(c.artifact("onnx"), out=_a_file(c) / "grid.png"))
row("second-output-unwritable", ["not writable: /proc"])(
    lambda c: c.sample(c.artifact("onnx"), "--gif", UNWRITABLE / "steps.gif"))
row("train-run-in-unwritable-directory", ["not writable: /proc"])(
    lambda c: ["train", "--out", UNWRITABLE / "run", *TINY_TRAIN])
row("train-run-directory-is-a-file", ["not a directory"])(lambda c: ["train", "--out", _a_file(c), *TINY_TRAIN])
row("export-to-unwritable-directory", ["not writable: /proc"])(
    lambda c: ["export", "--checkpoint", c.checkpoint, "--format", "onnx", "--out", UNWRITABLE / "unet.onnx"])


# ---- conflicting or impossible flags -------------------------------------------------------------------
row("sample-both-checkpoint-and-artifact", ["exactly one of --checkpoint"])(
    lambda c: ["sample", "--checkpoint", c.checkpoint, "--artifact", c.artifact("onnx"), "--out", c.out / "g.png"])
row("reference-sample-with-runtime-flags", ["--scheduler, --steps", "--artifact only"])(
    lambda c: ["sample", "--checkpoint", c.checkpoint, "--scheduler", "dpmpp", "--steps", "5", "--out", c.out / "g.png"])
row("export-no-verify-with-thresholds", ["--no-verify skips"])(
    lambda c: ["export", "--checkpoint", c.checkpoint, "--format", "onnx", "--no-verify", "--atol", "1e-3",
               "--out", c.out / "unet.onnx"])
row("eta-without-ddim", ["eta applies to the ddim scheduler only"])(
    lambda c: c.sample(c.artifact("onnx"), "--scheduler", "ddpm", "--eta", "0.5"))
row("checkpoint-every-0", ["intervals must be >= 1"])(
    lambda c: ["train", "--out", c.out / "run", *TINY_TRAIN, "--checkpoint-every", "0"])


# ---- the matrix ------------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> Dict[str, str]:
    """Every file under `folder` (hidden ones included) and a digest of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("build, fragments, code", ROWS)
def test_bad_input(build: Build, fragments: List[str], code: int, tiny_checkpoint, tiny_exports, tmp_path):
    case = Case(inputs=tmp_path / "inputs", out=tmp_path / "out", checkpoint=tiny_checkpoint, exports=tiny_exports)
    case.inputs.mkdir()
    case.out.mkdir()
    args = build(case)
    before = _snapshot(case.inputs)
    shared = {path: sha256_file(path) for path in (tiny_checkpoint, *tiny_exports.values())}

    assert_clean_error(run_cli(*args), *fragments, code=code)
    assert list(case.out.iterdir()) == [], "something was written where the output goes"
    assert _snapshot(case.inputs) == before, "an input file was changed"
    assert {path: sha256_file(path) for path in shared} == shared
