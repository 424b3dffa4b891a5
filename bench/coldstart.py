"""Cold start of the runtime, in a fresh process: import, open the artifact, first U-Net call.

    python -m bench.coldstart ARTIFACT BACKEND THREADS     (prints one REPLY_PREFIX JSON line)
"""
import time

_began = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def main(argv) -> None:
    artifact, backend, threads = argv
    from ..runtime.pipeline import Sampler  # the runtime: numpy + the backend's library once opened

    imported = time.perf_counter()
    sampler = Sampler.load(artifact, backend=backend, threads=int(threads) or None)
    opened = time.perf_counter()
    import numpy as np

    x = np.zeros((1, *sampler.image_shape), np.float32)
    sampler.backend(x, np.zeros(1, sampler.t_dtype))
    done = time.perf_counter()
    from ..bench.worker import REPLY_PREFIX

    sys.stdout.write(REPLY_PREFIX + json.dumps({"import_s": imported - _began, "open_s": opened - imported,
                                                "first_call_s": done - opened}) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
