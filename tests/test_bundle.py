"""`ms-ddpm bundle`: a C++ bundle copied away from the checkout runs with only its own libraries and the base
system, and writes the same PNG bytes as the Python runtime; a web bundle served by a plain static server samples
what Python samples (single-threaded, and threaded with the isolation headers); archives are byte-for-byte
reproducible; `ms-ddpm info` checks every file; bad input is one error line and leaves nothing behind."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Set

import numpy as np
import pytest

from conftest import LITE_PLATFORM, REPO, assert_clean_error, run_cli
from ms_ddpm.runtime.bundle import BASE_LIBRARIES, HOST_BINARY, OPTIONAL_LIBRARIES, has_symbol_table
from test_web import browser, generate, python_loop

N, SEED = 9, 987654
lite = pytest.mark.skipif(not LITE_PLATFORM, reason="MindSpore Lite's only PyPI wheel is for x86_64 Linux")
# The tools MindSpore Lite runs at start (`sh -c "cat /proc/cpuinfo | grep 'cpu MHz' | sed ..."`), and nothing else.
LITE_TOOLS = ("sh", "cat", "grep", "sed")


def bundle(artifact: Path, host: str, out: Path, *options: str) -> subprocess.CompletedProcess:
    return run_cli("bundle", artifact, "--host", host, "--out", out, *options)


def export_step(checkpoint: Path, out: Path, fmt: str) -> Path:
    """A dpmpp-sde sampler-step artifact at 5 steps, unverified (the export gate has its own tests)."""
    result = run_cli("export", "--checkpoint", checkpoint, "--format", fmt, "--sampler", "dpmpp-sde", "--steps", "5",
                     "--no-verify", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def lite_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_step(tiny_checkpoint, tmp_path_factory.mktemp("lite") / "unet.sampler.lite.mindir", "mslite")


@pytest.fixture(scope="module")
def onnx_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_step(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "unet.sampler.onnx", "onnx")


@pytest.fixture(scope="module")
def cpp_bundle(host, lite_artifact, tmp_path_factory) -> Path:
    """The bundle, copied into a fresh folder far from the checkout and from the folder it was written to."""
    out = tmp_path_factory.mktemp("made") / "ddpm-cpp"
    result = bundle(lite_artifact, "cpp", out)
    assert result.returncode == 0, result.stderr[-3000:]
    away = tmp_path_factory.mktemp("elsewhere") / "shipped"
    shutil.copytree(out, away, symlinks=True)
    shutil.rmtree(out)
    return away


def tool_path(folder: Path) -> str:
    """A PATH holding only the tools Lite runs: no Python on it."""
    folder.mkdir(exist_ok=True)
    for tool in LITE_TOOLS:
        if not (folder / tool).exists():
            (folder / tool).symlink_to(shutil.which(tool, path="/usr/bin:/bin"))
    return str(folder)


def run_shipped(folder: Path, *args, cwd: Path, trace: Path | None = None) -> subprocess.CompletedProcess:
    """bin/ddpm-sample ARGS under `env -i` with HOME in `cwd`, the PATH of tool_path and, with `trace`, strace."""
    command = [str(folder / "bin" / "ddpm-sample"), *map(str, args)]
    if trace is not None:
        command = [shutil.which("strace"), "-f", "-qq", "-e", "trace=openat,open,execve", "-o", str(trace), *command]
    env = {"PATH": tool_path(cwd / "tools"), "HOME": str(cwd)}
    return subprocess.run(["env", "-i", *(f"{key}={value}" for key, value in env.items()), *command], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def python_png(artifact: Path, out: Path) -> bytes:
    """Sampler.sample's grid (`ms-ddpm sample --artifact`, in its own process: Lite and MindSpore never share one)."""
    result = run_cli("sample", "--artifact", artifact, "--n", N, "--seed", SEED, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out.read_bytes()


# ---- the C++ bundle away from home ---------------------------------------------------------------------------
@lite
def test_cpp_bundle_away_from_home_writes_the_python_runtime_png(cpp_bundle, lite_artifact, tmp_path):
    model = cpp_bundle / "model" / lite_artifact.name
    result = run_shipped(cpp_bundle, "--model", model, "--n", N, "--seed", SEED, "--out", "grid.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "grid.png").read_bytes() == python_png(lite_artifact, tmp_path / "python.png")


def shared_objects_opened(trace: Path, binary: Path) -> Set[str]:
    """Every shared object that `binary`'s own processes opened (not the tools it ran), from strace -f's log."""
    program: Dict[str, str] = {}
    opened: Set[str] = set()
    pending: Dict[str, str] = {}  # a call strace split around another process's: "... <unfinished ...>"
    for line in trace.read_text().splitlines():
        pid, call = line.split(None, 1)
        if call.endswith("<unfinished ...>"):
            pending[pid] = call[:-len("<unfinished ...>")]
            continue
        if call.startswith("<... "):
            call = pending.pop(pid, "") + call.split(" resumed>", 1)[1]
        if call.startswith("execve(") and call.rstrip().endswith("= 0"):
            program[pid] = call.split('"')[1]
        elif call.startswith("+++") or call.startswith("---"):
            continue
        elif re.match(r"(openat|open)\(", call) and not re.search(r"= -1 ", call):
            path = re.search(r'"([^"]+)"', call).group(1)
            if re.search(r"\.so(\.\d+)*$", path) and program.get(pid, str(binary)) == str(binary):
                opened.add(path)
    return opened


@lite
def test_cpp_bundle_opens_only_its_own_libraries_and_the_base_system(cpp_bundle, lite_artifact, tmp_path):
    """Under strace: each shared object the host opens is in the bundle or named by its README as base or optional,
    and each library the bundle ships is opened (nothing shipped that the loader does not load)."""
    if shutil.which("strace") is None:
        pytest.fail("strace is needed (Debian's strace: `make hosts` installs it)")
    trace = tmp_path / "trace.txt"
    result = run_shipped(cpp_bundle, "--model", cpp_bundle / "model" / lite_artifact.name, "--n", 4, "--out", "grid.png",
                         cwd=tmp_path, trace=trace)
    assert result.returncode == 0, result.stderr[-3000:]
    opened = shared_objects_opened(trace, (cpp_bundle / "bin" / "ddpm-sample").resolve())
    lib = (cpp_bundle / "lib").resolve()
    outside = {path for path in opened if Path(path).parent.resolve() != lib}
    assert {Path(path).name for path in outside} <= set(BASE_LIBRARIES) | set(OPTIONAL_LIBRARIES), outside
    readme = (cpp_bundle / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in {Path(path).name for path in outside})
    assert {Path(path).name for path in opened if Path(path).parent.resolve() == lib} == \
        {path.name for path in lib.iterdir()}
    assert not any(str(REPO) in path for path in opened)


@lite
def test_cpp_bundle_runs_with_the_checkout_hidden(cpp_bundle, lite_artifact, tmp_path):
    """In a mount namespace where the checkout's .cache (the Lite wheel) is an empty folder."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m is not permitted here: the strace test shows nothing is read from the checkout")
    model = cpp_bundle / "model" / lite_artifact.name
    hide = f"mount -t tmpfs none {REPO / '.cache'} && exec {cpp_bundle}/bin/ddpm-sample \"$@\""
    result = subprocess.run(["unshare", "-m", "sh", "-c", hide, "sh", "--model", str(model), "--n", str(N), "--seed",
                             str(SEED), "--out", "grid.png"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "grid.png").read_bytes() == python_png(lite_artifact, tmp_path / "python.png")


@lite
def test_cpp_bundle_layout_rpath_version_and_stripped_libraries(host, cpp_bundle):
    binary = cpp_bundle / "bin" / "ddpm-sample"
    for built in (host, binary):  # the dev build bakes no path of the checkout into the binary either
        dynamic = subprocess.run(["readelf", "-d", str(built)], capture_output=True, text=True, check=True).stdout
        assert re.search(r"\(RPATH\)\s+Library rpath: \[\$ORIGIN/\.\./lib\]", dynamic), dynamic
        assert str(REPO) not in dynamic
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    from importlib import metadata

    assert version.strip() == f"ddpm-sample {metadata.version('ms-ddpm')} (ms-ddpm), built against MindSpore Lite 2.0.0"
    shipped = sorted(path.name for path in (cpp_bundle / "lib").iterdir())
    assert "libmindspore-extendrt_python.so" in shipped and "libmsplugin-ge-litert_python.so" in shipped
    assert not any(has_symbol_table(path) for path in (cpp_bundle / "lib").iterdir())
    assert (cpp_bundle / "lib" / "libdnnl.so.2").stat().st_size < (host.parent.parent / "lib" / "libdnnl.so.2").stat().st_size


@lite
def test_info_checks_every_file_of_a_bundle(cpp_bundle, tmp_path):
    result = run_cli("info", cpp_bundle)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bundle files: OK" in result.stdout and "sha256: OK" in result.stdout and "cpp host" in result.stdout
    damaged = tmp_path / "damaged"
    shutil.copytree(cpp_bundle, damaged, symlinks=True)
    library = damaged / "lib" / "libpng16.so.16"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    (damaged / "extra.txt").write_text("not part of the bundle")
    (damaged / "lib" / "libmindspore_glog.so.0").unlink()
    result = run_cli("info", damaged)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("sha256: MISMATCH (file ") and line.endswith(": lib/libpng16.so.16") for line in lines)
    assert "sha256: MISSING: lib/libmindspore_glog.so.0" in lines and "sha256: NOT LISTED in bundle.json: extra.txt" in lines
    assert "bundle files: MISMATCH" in lines


def test_info_on_an_artifact_with_a_flipped_byte_says_mismatch(onnx_artifact, tmp_path):
    copy = tmp_path / onnx_artifact.name
    data = bytearray(onnx_artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    shutil.copy(f"{onnx_artifact}.json", f"{copy}.json")
    for given in (copy, Path(f"{copy}.json")):
        result = run_cli("info", given)
        assert result.returncode == 1, result.stdout
        line = result.stdout.splitlines()[-1]
        assert re.fullmatch(r"sha256: MISMATCH \(file [0-9a-f]{64}, manifest [0-9a-f]{64}\)", line), line
    assert run_cli("info", onnx_artifact).stdout.splitlines()[-1] == "sha256: OK"


# ---- the web bundle on plain static servers ------------------------------------------------------------------
HEADER_SERVER = """
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()
http.server.test(HandlerClass=functools.partial(Handler, directory=sys.argv[1]), port=0, bind="127.0.0.1")
"""


@contextmanager
def static_server(folder: Path, headers: bool) -> Iterator[str]:
    """`python -m http.server` on `folder` (or the same with the COOP/COEP headers): yields its base URL."""
    command = ["-c", HEADER_SERVER, str(folder)] if headers else ["-m", "http.server", "0", "--bind", "127.0.0.1",
                                                                  "--directory", str(folder)]
    process = subprocess.Popen([sys.executable, "-u", *command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    try:
        port = re.search(r"port (\d+)", process.stdout.readline()).group(1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def web_site(onnx_artifact, tmp_path_factory) -> Path:
    """A site whose sub-folder `app/` is the web bundle: the page must work away from the server's root."""
    site = tmp_path_factory.mktemp("site")
    result = bundle(onnx_artifact, "web", site / "app")
    assert result.returncode == 0, result.stderr[-3000:]
    return site


def test_web_bundle_holds_the_page_one_wasm_and_the_model(web_site, onnx_artifact):
    folder = web_site / "app"
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    assert files == ["README.md", "app.mjs", "bundle.json", "grid.mjs", "index.html", "model.json", "model.onnx",
                     "noise.mjs", "ort/ort-wasm-simd-threaded.wasm", "ort/ort.wasm.bundle.min.mjs", "sampler.mjs"]
    assert (folder / "model.onnx").read_bytes() == onnx_artifact.read_bytes()
    readme = (folder / "README.md").read_text()
    assert "Cross-Origin-Opener-Policy: same-origin" in readme and "Cross-Origin-Embedder-Policy: require-corp" in readme
    assert run_cli("info", folder).returncode == 0


@browser
@pytest.mark.parametrize("headers", [False, True], ids=["plain-server", "isolation-headers"])
def test_web_bundle_on_a_static_server_samples_what_python_samples(web_site, onnx_artifact, tmp_path, headers):
    with static_server(web_site, headers) as url:
        report = generate(url + "app/", tmp_path, n=4, seed=SEED)
    assert report["state"] == "done", report
    page = np.fromfile(tmp_path / "result.f32", dtype="<f4").reshape(4, 1, 8, 8)
    assert np.abs(page - python_loop(onnx_artifact, 4, SEED)).max() <= 1e-4
    assert report["isolated"] is headers
    if headers:
        assert report["threads"] == min(4, report["cores"]) and "single-threaded" not in report["backend"]
    else:
        assert report["threads"] == 1 and "single-threaded" in report["backend"]
    assert all(response["status"] == 200 for response in report["responses"]), report["responses"]


# ---- reproducible archives -----------------------------------------------------------------------------------
def archive_entries(path: Path) -> List[tarfile.TarInfo]:
    with tarfile.open(path) as archive:
        return archive.getmembers()


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.xz"])
def test_two_web_archives_of_one_artifact_are_the_same_bytes(onnx_artifact, tmp_path, suffix):
    first, second = tmp_path / f"a/web{suffix}", tmp_path / f"b/web{suffix}"
    for out in (first, second):
        out.parent.mkdir()
        result = bundle(onnx_artifact, "web", out, "--tar")
        assert result.returncode == 0, result.stderr[-2000:]
    assert first.read_bytes() == second.read_bytes()
    entries = archive_entries(first)
    names = [entry.name for entry in entries]
    assert names == sorted(names) and names[0] == "web" and all(name.startswith("web") for name in names)
    assert all(entry.mtime == 0 and entry.uid == entry.gid == 0 and entry.uname == entry.gname == "" for entry in entries)
    with tarfile.open(first) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    assert run_cli("info", tmp_path / "unpacked" / "web").returncode == 0


@lite
def test_two_cpp_archives_of_one_artifact_are_the_same_bytes(host, lite_artifact, tmp_path):
    first, second = tmp_path / "a/cpp.tar.gz", tmp_path / "b/cpp.tar.gz"
    for out in (first, second):
        out.parent.mkdir()
        result = bundle(lite_artifact, "cpp", out, "--tar")
        assert result.returncode == 0, result.stderr[-2000:]
    assert first.read_bytes() == second.read_bytes()
    modes = {entry.name: entry.mode for entry in archive_entries(first)}
    assert modes["cpp/bin/ddpm-sample"] == 0o755 and modes["cpp/lib/libmindspore_core.so"] == 0o644


# ---- bad input: one error line, exit 2, no bundle ------------------------------------------------------------
def assert_nothing_written(folder: Path, *expected: str) -> None:
    assert sorted(path.name for path in folder.iterdir()) == sorted(expected)


def test_refuses_a_unet_artifact(tiny_exports, tmp_path):
    assert_clean_error(bundle(tiny_exports["onnx"], "web", tmp_path / "out"), "not a sampler artifact",
                       "--sampler NAME")
    assert_nothing_written(tmp_path)


def test_refuses_the_wrong_format_for_the_host(onnx_artifact, tmp_path):
    assert_clean_error(bundle(onnx_artifact, "cpp", tmp_path / "out"), "the C++ host runs mslite sampler-step artifacts")
    assert_nothing_written(tmp_path)


def test_refuses_a_missing_or_edited_manifest(onnx_artifact, tmp_path):
    lonely = tmp_path / "model" / onnx_artifact.name
    lonely.parent.mkdir()
    shutil.copy(onnx_artifact, lonely)
    assert_clean_error(bundle(lonely, "web", tmp_path / "out"), "manifest not found")
    manifest = json.loads(Path(f"{onnx_artifact}.json").read_text())
    manifest["artifact_sha256"] = "0" * 64
    Path(f"{lonely}.json").write_text(json.dumps(manifest))
    assert_clean_error(bundle(lonely, "web", tmp_path / "out"), "does not match its manifest", "sha256")
    assert_nothing_written(tmp_path, "model")


def test_refuses_an_out_that_exists_and_is_not_empty(onnx_artifact, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "a-file").write_text("mine")
    for out in ("full", "a-file"):
        assert_clean_error(bundle(onnx_artifact, "web", tmp_path / out), "exists and is not an empty folder")
    assert_nothing_written(tmp_path, "full", "a-file")
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert bundle(onnx_artifact, "web", tmp_path / "empty").returncode == 0


@pytest.mark.parametrize("out, options, message", [
    ("web.zip", ["--tar"], "with --tar, name the archive"), ("web.tar.gz", [], "names an archive: add --tar"),
    ("missing/out", [], "output directory does not exist")])
def test_refuses_a_bad_out(onnx_artifact, tmp_path, out, options, message):
    assert_clean_error(bundle(onnx_artifact, "web", tmp_path / out, *options), message)
    assert_nothing_written(tmp_path)


def test_refuses_an_unknown_host(onnx_artifact, tmp_path):
    assert_clean_error(bundle(onnx_artifact, "android", tmp_path / "out"), "--host must be one of cpp, web")


@lite
def test_refuses_a_host_that_is_not_built(lite_artifact, onnx_artifact, tmp_path, monkeypatch):
    from ms_ddpm.runtime import bundle as bundles, web
    from ms_ddpm.runtime.errors import ToolkitError

    monkeypatch.setattr(bundles, "HOST_BINARY", tmp_path / "absent" / "ddpm-sample")
    with pytest.raises(ToolkitError, match=r"the C\+\+ host is not built .* run `make hosts`"):
        bundles.bundle(lite_artifact, "cpp", tmp_path / "cpp")
    monkeypatch.setattr(web, "ORT_DIST", tmp_path / "absent")
    with pytest.raises(ToolkitError, match="onnxruntime-web is not installed.*make web"):
        bundles.bundle(onnx_artifact, "web", tmp_path / "web")
    assert_nothing_written(tmp_path)
