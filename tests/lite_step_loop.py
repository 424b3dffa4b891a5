"""The Python side of tests/test_cpp_host.py: the Python runtime (`Sampler`, backend mslite) on a sampler-step
Lite artifact, in a process of its own (Lite cannot share one with MindSpore, which the tests import).

    python lite_step_loop.py MODEL OUT.npz (--noise NOISE.npy | --seed S --n N) [--threads T] [--x0]

NOISE.npy: float32 (1 + noise_steps, N, C, H, W), x_T then each noisy step's z (the C++ host's --noise).
OUT.npz: x (the final x of `Sampler.denoise`), load_s and step_s (seconds: `Sampler.load`, each step); with
--seed, images (`Sampler.sample(N, seed=S)`, uint8); with --x0, x0 (each step's x0 prediction).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ms_ddpm.runtime.pipeline import Sampler


def previews(sampler: Sampler, x: np.ndarray, step_noise: list) -> np.ndarray:
    """Each step's x0 (the backend's second output), from the loop `Sampler.denoise` runs, written out."""
    steps = sampler.manifest.sampler["steps"]
    state = np.zeros((sampler.manifest.sampler["state_shape"][0], *x.shape), np.float32)
    x0s = []
    for i in range(steps):
        z = step_noise[i] if i < len(step_noise) else np.zeros_like(x)
        x, x0, state = sampler.backend(x, np.array([i], sampler.index_dtype), z, state)
        x0s.append(x0)
    return np.stack(x0s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--noise")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--n", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--x0", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    sampler = Sampler.load(args.model, threads=args.threads)
    load_s = time.perf_counter() - started
    scheduler = sampler.scheduler()
    if args.noise:
        noise = np.load(args.noise)
        x_T, step_noise = noise[0], list(noise[1:])
    else:
        x_T, step_noise = sampler.draw_noise(args.n, scheduler.noise_steps, args.seed)
        step_noise = list(step_noise)
    times = [time.perf_counter()]
    x = sampler.denoise(scheduler, x_T, step_noise, callback=lambda *_: times.append(time.perf_counter()))
    results = {"x": x, "load_s": load_s, "step_s": np.diff(times)}
    if args.seed is not None:
        results["images"] = sampler.sample(args.n, seed=args.seed)
    if args.x0:
        results["x0"] = previews(sampler, x_T, step_noise)
    np.savez(args.out, **results)
    os._exit(0)  # skip Lite's exit-time destructors (one has crashed at exit)


if __name__ == "__main__":
    main()
