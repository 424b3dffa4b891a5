"""The Python side of tests/test_cpp_host.py: the host loop on a sampler-step Lite artifact, through the
toolkit's native bridge, in a process of its own (no MindSpore here).

    python lite_step_loop.py MODEL.lite.mindir NOISE.npy OUT.npz [THREADS]

NOISE.npy: float32 (1 + noise_steps, N, C, H, W), x_T then each noisy step's z (the C++ host's --noise).
OUT.npz: x (the final x), x0 (every step's x0 prediction, (steps, N, C, H, W)), and the times in seconds
of the model load and of each step. Calls the bridge's C functions directly (output i of the step
model: 0 x_next, 1 x0, 2 state_next, in the ONNX graph's order).
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import time

import numpy as np

from ms_ddpm.runtime.mslite.native import MAX_RANK, MODEL_TYPE_MINDIR, library

INT_TYPES = {34: np.int32, 35: np.int64}  # mindspore::DataType codes


def _check(status: int) -> None:
    if status != 0:
        raise RuntimeError(library().msl_last_error().decode())


def _output(handle: int, index: int) -> np.ndarray:
    dims = (ctypes.c_int64 * MAX_RANK)()
    rank = library().msl_output_shape(handle, index, dims, MAX_RANK)
    if rank < 0:
        raise RuntimeError(library().msl_last_error().decode())
    out = np.empty(list(dims[:rank]), np.float32)
    _check(library().msl_output_copy(handle, index, out.ctypes.data, out.nbytes))
    return out


def main(model: str, noise_path: str, out_path: str, threads: int = 0) -> None:
    sampler = json.loads(open(model + ".json").read())["sampler"]
    noise = np.load(noise_path)
    x, z_steps = noise[0], noise[1:]
    lib = library()
    started = time.perf_counter()
    handle = lib.msl_model_load(model.encode(), MODEL_TYPE_MINDIR, threads)
    if not handle:
        raise RuntimeError(lib.msl_last_error().decode())
    index_type = INT_TYPES[lib.msl_input_dtype(handle, 1)]  # int64 in the ONNX graph, int32 after Lite's converter
    state = np.zeros((sampler["state_shape"][0], *x.shape), np.float32)
    shapes = [x.shape, (1,), x.shape, state.shape]
    flat = [d for shape in shapes for d in shape]
    _check(lib.msl_resize(handle, (ctypes.c_int64 * len(flat))(*flat), (ctypes.c_int * 4)(*map(len, shapes)), 4))
    load_s = time.perf_counter() - started
    x0s, step_s = [], []
    for i in range(sampler["steps"]):
        started = time.perf_counter()
        z = z_steps[i] if i < sampler["noise_steps"] else np.zeros_like(x)
        arrays = [np.ascontiguousarray(a) for a in (x, np.array([i], index_type), z, state)]
        pointers = (ctypes.c_void_p * 4)(*[a.ctypes.data for a in arrays])
        _check(lib.msl_predict(handle, pointers, (ctypes.c_size_t * 4)(*[a.nbytes for a in arrays]), 4))
        x, x0, state = (_output(handle, k) for k in range(3))
        x0s.append(x0)
        step_s.append(time.perf_counter() - started)
    np.savez(out_path, x=x, x0=np.stack(x0s), load_s=load_s, step_s=np.array(step_s))
    sys.stdout.flush()
    os._exit(0)  # skip Lite's exit-time destructors (one has crashed at exit)


if __name__ == "__main__":
    main(*sys.argv[1:4], *map(int, sys.argv[4:5]))
