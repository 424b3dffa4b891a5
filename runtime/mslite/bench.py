"""Lite vs onnxruntime on the same U-Net: agreement (max abs) and latency per call.

    python -m runtime.mslite.bench unet.onnx unet.mindir --batches 1 16 64 --threads 1

onnxruntime and Lite can share a process (only MindSpore cannot), so both run here with the same
thread count, timed alternately call by call: a busy machine slows both alike and the ratio holds.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, List, Tuple

import numpy as np

from ..errors import ToolkitError
from .backend import MsliteBackend


def _ort_eps(path: str, threads: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda x, t: session.run(None, dict(zip(names, (x, t))))[0]


def _time_pair(first, second, args, repeats: int) -> Tuple[float, float]:
    """Median seconds per call of each, calls alternating, after one warm-up each."""
    first(*args), second(*args)
    times: List[List[float]] = [[], []]
    for _ in range(repeats):
        for slot, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn(*args)
            times[slot].append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.mslite.bench", description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("mindir")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timesteps", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        lite = MsliteBackend(args.mindir, threads=args.threads)
        ort_eps = _ort_eps(args.onnx, args.threads)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    rng = np.random.default_rng(0)
    print(f"{lite.description}, {args.threads} thread(s); median of {args.repeats} calls")
    print("batch  max_abs   ort_ms   lite_ms  lite/ort")
    for batch in args.batches:
        x = rng.standard_normal((batch, *lite.sample_shape), dtype=np.float32)
        t = rng.integers(0, args.timesteps, batch).astype(np.int32)
        max_abs = float(np.abs(lite(x, t) - ort_eps(x, t)).max())
        ort_s, lite_s = _time_pair(ort_eps, lite, (x, t), args.repeats)
        print(f"{batch:5d}  {max_abs:.1e}  {ort_s * 1e3:7.2f}  {lite_s * 1e3:8.2f}  {lite_s / ort_s:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
