"""`cli.py web`: the browser host on onnxruntime-web, in a real headless Chromium (Debian's `chromium`, driven by
playwright-core from npm; both installed by `make web`). The page's samples equal the Python loop on the same
artifact and seed, its noise equals Python's, the server serves its own files and nothing else, and bad input
gives one error line (CLI) or an error text (page)."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from ms_ddpm.runtime.images import grid_image, make_grid, to_uint8
from ms_ddpm.runtime.manifest import manifest_path_for
from ms_ddpm.runtime.noise import NoiseStream, normals
from ms_ddpm.runtime.web import ORT_DIST, PAGE, PAGE_FILES

from conftest import REPO, assert_clean_error, run_cli

DRIVER = PAGE / "drive.mjs"
N, SEED = 4, 0
MISSING_TOOLS = [what for what, present in [
    ("node", shutil.which("node")), ("chromium", shutil.which("chromium")),
    ("playwright-core", (PAGE / "node_modules" / "playwright-core").is_dir()), ("onnxruntime-web", ORT_DIST.is_dir())]
    if not present]
browser = pytest.mark.skipif(bool(MISSING_TOOLS), reason=f"{', '.join(MISSING_TOOLS)} not installed: run `make web` "
                                                          "(as root it also installs Debian's chromium)")


# ---- artifacts ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, tmp_path_factory) -> dict:
    """Sampler-step artifacts of the tiny U-Net, as `cli.py export --sampler` writes them (gate included)."""
    folder = tmp_path_factory.mktemp("web")
    paths = {}
    for name in ("dpmpp", "ddpm"):
        paths[name] = folder / f"{name}.sampler.onnx"
        result = run_cli("export", "--checkpoint", tiny_checkpoint, "--format", "onnx", "--sampler", name, "--steps", "10",
                         "--out", paths[name])
        assert result.returncode == 0, result.stderr[-2000:]
    return paths


@pytest.fixture(scope="module")
def urls(artifacts) -> Iterator[dict]:
    """One `cli.py web` per artifact for the tests that leave the files alone."""
    if not ORT_DIST.is_dir():
        pytest.skip("onnxruntime-web is not installed: run `make web`")
    with ExitStack() as stack:
        yield {name: stack.enter_context(serving(artifact)) for name, artifact in artifacts.items()}


def python_loop(artifact: Path, n: int, seed: int) -> np.ndarray:
    """The host loop on onnxruntime with the portable noise: what the page must compute."""
    sampler = json.loads(manifest_path_for(artifact).read_text())["sampler"]
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    shape = (n, *session.get_inputs()[0].shape[1:])
    noise = NoiseStream(seed)
    x = noise.draw(shape)
    state = np.zeros((sampler["state_shape"][0], *shape), np.float32)
    for i in range(sampler["steps"]):
        z = noise.draw(shape) if i < sampler["noise_steps"] else np.zeros(shape, np.float32)
        x, state = session.run(["x_next", "state_next"], {"x": x, "i": np.array([i], np.int64), "z": z, "state": state})
    return x


# ---- the server, the driver ----------------------------------------------------------------------------
@contextmanager
def serving(artifact: Path, *args: str) -> Iterator[str]:
    """`cli.py web --artifact ARTIFACT --port 0 ARGS`: yields the URL it prints; stops it afterwards."""
    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "web", "--artifact", str(artifact), "--port", "0",
                                *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving "), (line, process.stderr.read() if process.poll() is not None else "")
        yield line.split(" at ")[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=10)


def drive(*args: str, timeout: float = 300) -> None:
    env = {**os.environ, "CHROMIUM": shutil.which("chromium") or ""}
    result = subprocess.run(["node", str(DRIVER), *map(str, args)], capture_output=True, text=True, env=env,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


def generate(url: str, out: Path, n: int = N, seed: int = SEED) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    drive("generate", url, out, n, seed)
    return json.loads((out / "report.json").read_text())


def grid_png(x: np.ndarray) -> np.ndarray:
    """The pixels save_grid writes for float images x (N, C, H, W), as RGB."""
    return np.asarray(grid_image(make_grid(to_uint8(x)), None, x.shape[-1]).convert("RGB"))


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---- the page samples what Python samples ---------------------------------------------------------------
@browser
@pytest.mark.parametrize("scheduler, threads", [("dpmpp", None), ("ddpm", None), ("dpmpp", 1)])
def test_page_samples_what_python_samples(artifacts, urls, tmp_path, scheduler, threads):
    """DPM-Solver++ carries a state, DDPM draws a z every step; the page's default threads, and one."""
    artifact = artifacts[scheduler]
    report = generate(urls[scheduler] + (f"?threads={threads}" if threads else ""), tmp_path)
    assert report["state"] == "done", report
    theirs = np.fromfile(tmp_path / "result.f32", dtype="<f4").reshape(N, 1, 8, 8)
    ours = python_loop(artifact, N, SEED)
    assert np.abs(theirs - ours).max() <= 1e-4
    assert len(report["stepMs"]) == 10
    # the canvas and the Download button's PNG are save_grid's picture of the page's floats, pixel for pixel
    expected = grid_png(theirs)
    np.testing.assert_array_equal(rgb(tmp_path / "canvas.png"), expected)
    np.testing.assert_array_equal(rgb(tmp_path / "download.png"), expected)
    assert report["downloadName"] == f"ms-ddpm-{scheduler}10-seed0.png"
    # the screenshot shows the canvas on screen, not blank: the grid as drawn
    shown = rgb(tmp_path / "canvas-shot.png")  # the clip rounds a fractional layout box out by up to a pixel
    assert len(np.unique(shown)) > 10 and (tmp_path / "page.png").stat().st_size > 0
    np.testing.assert_array_equal(shown[:expected.shape[0], :expected.shape[1]], expected)
    # wasm threads under cross-origin isolation (the server's COOP/COEP), as many as asked or min(4, cores)
    assert report["isolated"] is True and report["threads"] == (threads or min(4, report["cores"]))
    assert f"wasm execution provider, {report['threads']} thread" in report["backend"]
    # the page downloads its own files, onnxruntime-web's two and the model: nothing else, nothing missing
    paths = {response["url"].split("/", 3)[3].split("?")[0]: response for response in report["responses"]}
    expected = {"", *PAGE_FILES, "ort/ort.wasm.bundle.min.mjs", "ort/ort-wasm-simd-threaded.wasm", "model.json",
                "model.onnx"}
    assert set(paths) == expected and all(response["status"] == 200 for response in paths.values()), paths


@browser
def test_browser_noise_equals_python(urls, tmp_path):
    seeds = [0, 1, 12345, 2**40 + 7, 2**64 - 1]
    count = 10**5
    drive("noise", urls["dpmpp"], tmp_path, count, *seeds)
    for seed in seeds:
        theirs = np.fromfile(tmp_path / f"normals-{seed}.f32", dtype="<f4")
        assert theirs.shape == (count,)
        assert np.abs(theirs.astype(np.float64) - normals(seed, count)).max() <= 1e-6, seed


def test_javascript_uint8_rounds_like_numpy(tmp_path):
    """grid.mjs's toUint8 on float32 values at and around every rounding boundary, and on random ones."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: run `make web`")
    boundaries = ((np.arange(257, dtype=np.float64) - 0.5) / 127.5 - 1).astype(np.float32)
    near = [np.nextafter(boundaries, np.float32(side * np.inf)) for side in (-1, 1)]
    x = np.concatenate([boundaries, *near, np.random.default_rng(0).normal(0, 1.5, 10**5).astype(np.float32),
                        np.float32([-1, 1, 0, -1e30, 1e30])])
    x.tofile(tmp_path / "x.f32")
    script = (f"import {{ readFileSync, writeFileSync }} from 'node:fs'; import {{ toUint8 }} from {(PAGE / 'grid.mjs').as_uri()!r};"
              f"const x = new Float32Array(readFileSync({str(tmp_path / 'x.f32')!r}).buffer.slice(0));"
              f"writeFileSync({str(tmp_path / 'u8')!r}, Uint8Array.from(x, toUint8));")
    subprocess.run([node, "--input-type=module", "-e", script], check=True)
    expected = to_uint8(x.reshape(1, 1, 1, -1)).reshape(-1)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "u8", dtype=np.uint8), expected)


# ---- the page shows errors instead of hanging --------------------------------------------------------------
def drop_sampler_section(manifest: Path) -> None:
    data = json.loads(manifest.read_text())
    del data["sampler"]
    manifest.write_text(json.dumps(data))


@browser
@pytest.mark.parametrize("damage, text", [
    (lambda artifact, plain: shutil.copy(plain, artifact), "not a sampler artifact: the model takes x, t -> eps"),
    (lambda artifact, plain: artifact.write_bytes(b"not an onnx model" * 100), "the artifact failed to load"),
    (lambda artifact, plain: drop_sampler_section(manifest_path_for(artifact)), "its manifest has no sampler section"),
], ids=["plain-unet", "not-onnx", "no-sampler-section"])
def test_page_shows_load_errors(artifacts, tiny_exports, tmp_path, damage, text):
    """The files on disk change after the server checked them: the page says what is wrong instead of hanging."""
    artifact = tmp_path / "x.sampler.onnx"
    shutil.copy(artifacts["dpmpp"], artifact)
    shutil.copy(manifest_path_for(artifacts["dpmpp"]), manifest_path_for(artifact))
    with serving(artifact) as url:
        damage(artifact, tiny_exports["onnx"])
        drive("load", url, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["state"] == "error" and text in report["errorText"], report
    assert report["errorText"].startswith("Error: ")


# ---- the server serves its files and nothing else -------------------------------------------------------------
def request(url: str, method: str, path: str, headers: Optional[dict] = None) -> http.client.HTTPResponse:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(method, path, headers=headers or {})  # the path exactly as given: no client-side normalisation
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def test_server_serves_its_files_with_types_and_isolation_headers(artifacts, urls):
    artifact, url = artifacts["dpmpp"], urls["dpmpp"]
    assert url.startswith("http://127.0.0.1:")
    expected = {"/": "text/html", "/?test=1": "text/html", "/app.mjs": "text/javascript",
                "/ort/ort.wasm.bundle.min.mjs": "text/javascript", "/ort/ort-wasm-simd-threaded.wasm": "application/wasm",
                "/model.json": "application/json", "/model.onnx": "application/octet-stream"}
    for path, content_type in expected.items():
        response = request(url, "GET", path)
        assert response.status == 200 and response.getheader("Content-Type").startswith(content_type), path
        assert response.getheader("Cross-Origin-Opener-Policy") == "same-origin"
        assert response.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
    assert request(url, "GET", "/model.onnx").body == artifact.read_bytes()
    assert request(url, "GET", "/model.json").body == manifest_path_for(artifact).read_bytes()
    head = request(url, "HEAD", "/model.onnx")
    assert head.status == 200 and head.body == b"" and int(head.getheader("Content-Length")) == artifact.stat().st_size


def test_server_answers_a_current_copy_with_304_and_a_changed_file_anew(artifacts, tmp_path):
    """Every file carries an ETag and a Last-Modified date; sent back (If-None-Match, or If-Modified-Since alone),
    they get 304 with no body and the isolation headers; If-None-Match wins over the date; a file rewritten on disk
    gets a new ETag and its new bytes."""
    if not ORT_DIST.is_dir():
        pytest.skip("onnxruntime-web is not installed: run `make web`")
    artifact = tmp_path / "x.sampler.onnx"
    shutil.copy(artifacts["dpmpp"], artifact)
    shutil.copy(manifest_path_for(artifacts["dpmpp"]), manifest_path_for(artifact))
    epoch = "Thu, 01 Jan 1970 00:00:00 GMT"
    with serving(artifact) as url:
        for path in ("/", "/ort/ort-wasm-simd-threaded.wasm", "/model.onnx"):
            first = request(url, "GET", path)
            etag, modified = first.getheader("ETag"), first.getheader("Last-Modified")
            assert first.status == 200 and etag.startswith('"') and modified.endswith(" GMT"), path
            for method, headers in [("GET", {"If-None-Match": etag}), ("HEAD", {"If-None-Match": etag}),
                                    ("GET", {"If-None-Match": f'"other", W/{etag}'}), ("GET", {"If-None-Match": "*"}),
                                    ("GET", {"If-Modified-Since": modified})]:
                again = request(url, method, path, headers)
                assert again.status == 304 and again.body == b"" and again.getheader("ETag") == etag, (path, headers)
                assert again.getheader("Content-Length") is None
                assert again.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
            for headers in [{"If-None-Match": '"other"'}, {"If-Modified-Since": epoch},
                            {"If-Modified-Since": "not a date"}, {"If-None-Match": '"other"', "If-Modified-Since": modified}]:
                fresh = request(url, "GET", path, headers)
                assert fresh.status == 200 and fresh.body == first.body and len(fresh.body) > 0, (path, headers)
        old = request(url, "GET", "/model.onnx").getheader("ETag")
        artifact.write_bytes(artifact.read_bytes() + b"\0")
        changed = request(url, "GET", "/model.onnx", {"If-None-Match": old})
        assert changed.status == 200 and changed.body == artifact.read_bytes() and changed.getheader("ETag") != old


OTHER_PATHS = [
    "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/.%2e/etc/passwd", "//etc/passwd", "/ort/../../web.py", "/ort/",
    "/ort", "/node_modules/onnxruntime-web/package.json", "/ort/ort.min.mjs", "/drive.mjs", "/package.json",
    "/index.html", "/app.mjs/", "/model.onnx.json", "/dpmpp.sampler.onnx", "/x.onnx", "/hosts/web/app.mjs",
    "/%2Fetc%2Fpasswd", "/etc/passwd", "/web.py",
]


def test_server_gives_404_for_every_other_path(urls):
    for path in OTHER_PATHS:
        response = request(urls["dpmpp"], "GET", path)
        assert response.status == 404 and b"root:" not in response.body and b"<a href" not in response.body, path


# ---- bad input: one error line, exit 2 --------------------------------------------------------------------
def test_cli_refuses_a_plain_unet(tiny_exports):
    assert_clean_error(run_cli("web", "--artifact", tiny_exports["onnx"], "--port", "0"), "not a sampler artifact")


def test_cli_refuses_missing_or_mismatched_files(artifacts, tmp_path):
    assert_clean_error(run_cli("web", "--artifact", tmp_path / "absent.sampler.onnx"), "artifact not found")
    lonely = tmp_path / "lonely.sampler.onnx"
    shutil.copy(artifacts["dpmpp"], lonely)
    assert_clean_error(run_cli("web", "--artifact", lonely), "manifest not found")
    manifest_path_for(lonely).write_text("{not json")
    assert_clean_error(run_cli("web", "--artifact", lonely), "is not valid JSON")
    shutil.copy(manifest_path_for(artifacts["dpmpp"]), manifest_path_for(lonely))
    with open(lonely, "ab") as handle:
        handle.write(b"\0")
    assert_clean_error(run_cli("web", "--artifact", lonely), "does not match its manifest")


def test_cli_refuses_a_port_in_use(artifacts):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_clean_error(run_cli("web", "--artifact", artifacts["dpmpp"], "--port", port), f"port {port}", "in use")


def test_cli_explains_how_to_install_onnxruntime_web(artifacts, tmp_path, monkeypatch):
    from ms_ddpm.runtime import web
    from ms_ddpm.runtime.errors import ToolkitError

    monkeypatch.setattr(web, "ORT_DIST", tmp_path / "absent")
    with pytest.raises(ToolkitError, match="onnxruntime-web is not installed.*make web"):
        web.routes(artifacts["dpmpp"])


def test_cli_warns_once_when_reachable_from_the_network(artifacts):
    if not ORT_DIST.is_dir():
        pytest.skip("onnxruntime-web not installed: run `make web`")
    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "web", "--artifact", str(artifacts["dpmpp"]),
                                "--port", "0", "--host", "0.0.0.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().startswith("serving ")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "reachable from the network" in warnings[0], stderr
