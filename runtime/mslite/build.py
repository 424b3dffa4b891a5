"""Fetch the PyPI MindSpore Lite 2.0.0 wheel and compile the native bridge against it.

    python -m ms_ddpm.runtime.mslite.build                   # fetch, unpack, compile the bridge
    python -m ms_ddpm.runtime.mslite.build --make-variables  # what runtime/hosts/cpp/Makefile takes (`make hosts`)

Idempotent: a no-op (well under a second) when the wheel is unpacked and the bridge is up to date.
The wheel's own Python binding is for CPython 3.7 only, so on any other Python the toolkit reaches
Lite through `bridge.cpp` (a small C ABI, loaded with ctypes). Nothing is installed: everything
lives in the cache directory (`$MSLITE_CACHE`, default `<repo>/.cache/mslite`).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from ..errors import ToolkitError

LITE_VERSION = "2.0.0"
WHEEL_NAME = f"mindspore_lite-{LITE_VERSION}-cp37-cp37m-manylinux1_x86_64.whl"
BUILD_COMMAND = f"{Path(sys.executable).name} -m {__spec__.name}"
SOURCE = Path(__file__).with_name("bridge.cpp")
LIBRARIES = ("mindspore-extendrt_python", "mindspore_converter", "mindspore_core")


def cache_dir() -> Path:
    """Where the wheel, its unpacked files and the compiled bridge live."""
    if os.environ.get("MSLITE_CACHE"):
        return Path(os.environ["MSLITE_CACHE"]).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():  # a checkout (editable install): keep it beside the repo
        return repo / ".cache" / "mslite"
    return Path.home() / ".cache" / "ms-ddpm" / "mslite"


def lite_root() -> Path:
    """The unpacked `mindspore_lite` package: `include/` (C++ headers) and `lib/` (shared libraries)."""
    return cache_dir() / "wheel" / "mindspore_lite"


def host_make_variables() -> list[str]:
    """The variables of runtime/hosts/cpp/Makefile: the unpacked wheel, its Lite version, this toolkit's version."""
    return [f"LITE={lite_root()}", f"LITE_VERSION={LITE_VERSION}", f"VERSION={metadata.version('ms-ddpm')}"]


def bridge_library() -> Path:
    return cache_dir() / "libmslite_bridge.so"


def check_platform() -> None:
    """The only Lite wheel on PyPI is manylinux x86_64."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolkitError(f"the MindSpore Lite native bridge needs x86_64 Linux (the only PyPI wheel of "
                           f"mindspore-lite {LITE_VERSION}); this is {sys.platform}/{platform.machine()}")


def fetch_wheel() -> Path:
    """Download the wheel with pip (no install, no dependencies) unless it is already cached."""
    wheel = cache_dir() / WHEEL_NAME
    if wheel.is_file():
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading mindspore-lite=={LITE_VERSION} (about 170 MB) into {wheel.parent}", flush=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "37",
               "-d", str(wheel.parent), f"mindspore-lite=={LITE_VERSION}"]
    if subprocess.run(command).returncode != 0 or not wheel.is_file():
        raise ToolkitError(f"could not download mindspore-lite=={LITE_VERSION} from PyPI "
                           f"(command: {' '.join(command)})")
    return wheel


def unpack_wheel(wheel: Path) -> Path:
    """Unzip the wheel into the cache (to a temporary directory first, so a torn unzip is never used)."""
    root = lite_root()
    if (root / "lib").is_dir() and (root / "include").is_dir():
        return root
    target = root.parent
    shutil.rmtree(target, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".wheel.", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging)
        staging.rename(target)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ToolkitError(f"cannot unpack {wheel}: {exc} (delete it and run `{BUILD_COMMAND}` again)") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def compile_command(root: Path, output: Path) -> list[str]:
    """g++ flags that work with the wheel: old string ABI, an RPATH (not RUNPATH) so libdnnl.so.2 is found."""
    lib = root / "lib"
    return ["g++", "-std=c++17", "-O2", "-fPIC", "-shared", "-D_GLIBCXX_USE_CXX11_ABI=0", f"-I{root}",
            str(SOURCE), "-o", str(output), f"-L{lib}", *(f"-l{name}" for name in LIBRARIES),
            f"-Wl,--disable-new-dtags,-rpath,{lib}"]


def compile_bridge(root: Path) -> Path:
    """Compile bridge.cpp unless the library on disk was built from the same source and command."""
    library = bridge_library()
    stamp_file = library.with_suffix(".stamp")
    stamp = hashlib.sha256(SOURCE.read_bytes() + " ".join(compile_command(root, library)).encode()).hexdigest()
    if library.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return library
    if shutil.which("g++") is None:
        raise ToolkitError("g++ is needed to build the MindSpore Lite native bridge (install build-essential)")
    print(f"compiling {SOURCE.name} -> {library}", flush=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".bridge.", suffix=".so", dir=library.parent)
    os.close(fd)
    try:
        result = subprocess.run(compile_command(root, Path(tmp_name)), capture_output=True, text=True)
        if result.returncode != 0:
            raise ToolkitError(f"compiling the MindSpore Lite bridge failed: {_first_error(result.stderr)}")
        os.replace(tmp_name, library)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    stamp_file.write_text(stamp)
    return library


def ensure_bridge() -> Path:
    """Everything the native path needs: wheel fetched and unpacked, bridge compiled. Returns the library."""
    check_platform()
    return compile_bridge(unpack_wheel(fetch_wheel()))


def _first_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if "error" in line]
    return (errors or stderr.splitlines() or ["no compiler output"])[0].strip()


def main() -> int:
    from . import official

    if sys.argv[1:] == ["--make-variables"]:
        print(" ".join(host_make_variables()))
        return 0
    try:
        if official.available():
            print(f"MindSpore Lite {official.version()} via the official Python API (mindspore_lite)")
            return 0
        library = ensure_bridge()
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"MindSpore Lite {LITE_VERSION} via native bridge ({library})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
