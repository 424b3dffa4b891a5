"""MindSpore training module for the tutorial's DDPM.

Importing this package applies the CPU dispatch fix *before* MindSpore loads: on AVX-512 x86 CPUs
MindSpore's oneDNN picks a reference kernel for NCHW 3x3 convolutions (about 0.7 GFLOP/s);
capping oneDNN at AVX2 makes it pick `gemm:jit`, about 10x faster. A user-set
ONEDNN_MAX_CPU_ISA is always respected.

It also sets GLOG_v=3 (errors only) unless the user set it: MindSpore's default level prints
deprecation warnings about its own internals on every import.
"""
import os
import platform

_ISA_VAR = "ONEDNN_MAX_CPU_ISA"


def _apply_cpu_dispatch() -> str:
    if _ISA_VAR in os.environ:
        return f"{_ISA_VAR}={os.environ[_ISA_VAR]} (set by the user)"
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ[_ISA_VAR] = "AVX2"
        return f"{_ISA_VAR}=AVX2 (set automatically for fast x86 convolutions; export {_ISA_VAR}=ALL to opt out)"
    return f"{_ISA_VAR} not set (not an x86 CPU)"


CPU_DISPATCH_NOTE = _apply_cpu_dispatch()
os.environ.setdefault("GLOG_v", "3")
