"""`ms-ddpm web`: a local HTTP server for the browser host (runtime/hosts/web/), which samples from a
sampler-step artifact on onnxruntime-web. The server does no sampling; it serves a fixed table of files
and nothing else (404 for every other path, no directory listing, never a path joined from a request):

    /                                the page (index.html), /app.mjs, /sampler.mjs, /grid.mjs, /noise.mjs
    /ort/ort.wasm.bundle.min.mjs     onnxruntime-web (pinned in runtime/hosts/web/package.json, `make web`)
    /ort/ort-wasm-simd-threaded.wasm
    /model.onnx, /model.json         the artifact and its manifest, read from disk on each request

Every response carries the cross-origin isolation headers (COOP/COEP) that wasm threads need. A file's
response carries its ETag (inode, size and mtime) and Last-Modified, and a request whose If-None-Match (or,
without one, If-Modified-Since) still matches the file gets 304 Not Modified with no body: a reload
revalidates the 14 MB wasm instead of fetching it again, and a file changed on disk is sent anew.
"""
from __future__ import annotations

import email.utils
import errno
import ipaddress
import os
import shutil
import socket
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import typer

from .errors import ToolkitError, first_line
from .manifest import manifest_path_for

PAGE = Path(__file__).resolve().parent / "hosts" / "web"
ORT_DIST = PAGE / "node_modules" / "onnxruntime-web" / "dist"
PAGE_FILES = ("app.mjs", "sampler.mjs", "grid.mjs", "noise.mjs")
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
                 ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream"}
HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
Routes = Dict[str, Tuple[Path, str]]  # URL path -> (file, content type)


def web(
    artifact: Path = typer.Option(..., help="A sampler-step ONNX artifact (ms-ddpm export --format onnx --sampler NAME), with its manifest <artifact>.json beside it."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on (0: any free port; the URL is printed)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback makes the page reachable from the network."),
) -> None:
    """Serve a page that samples from a sampler-step artifact in the browser, on onnxruntime-web."""
    server = make_server(routes(artifact), host, port)
    if not _loopback(host):
        typer.echo(f"warning: --host {host} makes the page and the artifact reachable from the network", err=True)
    bound_host, bound_port = server.server_address[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    typer.echo(f"serving {artifact} at http://{url_host}:{bound_port}/ (Ctrl+C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()


def routes(artifact: Path) -> Routes:
    """The server's whole file table; refuses an artifact that is not an ONNX sampler-step model matching its
    manifest, and a checkout where onnxruntime-web is not installed."""
    from .pipeline import load_step_artifact  # numpy and the backends: only when the command runs

    artifact, _ = load_step_artifact(artifact, "onnx", "the page")
    missing = [name for name in ORT_FILES if not (ORT_DIST / name).is_file()]
    if missing:
        raise ToolkitError(f"onnxruntime-web is not installed ({ORT_DIST / missing[0]} is missing): run `make web`, "
                           f"or `npm ci` in {PAGE}")
    table = {"/": (PAGE / "index.html", CONTENT_TYPES[".html"]), "/model.onnx": (artifact, CONTENT_TYPES[".onnx"]),
             "/model.json": (manifest_path_for(artifact), CONTENT_TYPES[".json"])}
    table.update({f"/{name}": (PAGE / name, CONTENT_TYPES[".mjs"]) for name in PAGE_FILES})
    table.update({f"/ort/{name}": (ORT_DIST / name, CONTENT_TYPES[Path(name).suffix]) for name in ORT_FILES})
    return table


def make_server(table: Routes, host: str, port: int) -> ThreadingHTTPServer:
    """A threading HTTP server bound to host:port that serves `table`; a bad host or a busy port is a ToolkitError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ToolkitError(f"--host {host}: {exc.strerror}") from exc
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
    try:
        return server_class((host, port), partial(_Handler, table))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ToolkitError(f"port {port} on {host} is in use: choose another with --port (0: any free port)") from exc
        raise ToolkitError(f"cannot listen on {host}:{port}: {exc.strerror or first_line(exc)}") from exc


def not_modified(request_headers: Mapping[str, str], etag: str, mtime: float) -> bool:
    """Whether the client's copy is current (RFC 9110, 13.1): If-None-Match lists `etag` (or is `*`; weak
    comparison), or, only when there is no If-None-Match, If-Modified-Since is no earlier than `mtime` (seconds)."""
    if_none_match = request_headers.get("If-None-Match")
    if if_none_match is not None:
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or etag in tags
    if_modified_since = request_headers.get("If-Modified-Since")
    if if_modified_since is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):  # an unparsable date is ignored, as the RFC says
        return False
    return since.tzinfo is not None and int(mtime) <= since.timestamp()


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of the paths in the table (the query string ignored); 404 for everything else."""

    def __init__(self, table: Routes, *args):
        self.table = table
        super().__init__(*args)

    def do_GET(self) -> None:
        self._send(body=True)

    def do_HEAD(self) -> None:
        self._send(body=False)

    def _send(self, body: bool) -> None:
        file, content_type = self.table.get(urlsplit(self.path).path, (None, None))
        try:
            handle = open(file, "rb") if file is not None else None
        except OSError:
            handle = None
        if handle is None:
            self._headers(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", len(b"not found\n"))
            if body:
                self.wfile.write(b"not found\n")
            return
        with handle:
            stat = os.fstat(handle.fileno())
            validators = {"ETag": f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"',
                          "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True)}
            if not_modified(self.headers, validators["ETag"], stat.st_mtime):
                self._headers(HTTPStatus.NOT_MODIFIED, content_type, None, validators)
                return
            self._headers(HTTPStatus.OK, content_type, stat.st_size, validators)
            if body:
                try:
                    shutil.copyfileobj(handle, self.wfile)
                except (BrokenPipeError, ConnectionResetError):  # the browser went away mid-download
                    pass

    def _headers(self, status: HTTPStatus, content_type: str, length: Optional[int],
                 validators: Optional[Dict[str, str]] = None) -> None:
        """The status line and headers; a 304 (length None) has no Content-Length."""
        self.send_response(status)
        length_header = {} if length is None else {"Content-Length": str(length)}
        for name, value in {"Content-Type": content_type, **length_header, **HEADERS, **(validators or {})}.items():
            self.send_header(name, value)
        self.end_headers()

    def log_request(self, code="-", size="-") -> None:
        """Only failed requests are worth a line."""
        if isinstance(code, int) and code >= 400:
            super().log_request(code, size)
