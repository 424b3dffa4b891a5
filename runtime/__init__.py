"""The MindSpore-free sampling runtime: numpy schedulers around an exported U-Net.

    from ms_ddpm.runtime import Sampler
    images = Sampler.load("unet.onnx").sample(16, scheduler="dpmpp", steps=20, seed=0)

`Sampler` is imported on first use, so `import ms_ddpm.runtime.errors` (and the CLI) stay light.
"""
from typing import Any

__all__ = ["Sampler"]


def __getattr__(name: str) -> Any:
    if name == "Sampler":
        from .pipeline import Sampler

        return Sampler
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
