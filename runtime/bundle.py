"""`ms-ddpm bundle`: a folder (or a deterministic .tar.gz / .tar.xz) that samples from a sampler-step artifact on a
machine that never saw this checkout.

    --host cpp   bin/ddpm-sample (RPATH $ORIGIN/../lib), lib/ (exactly the shared libraries it loads beyond the base
                 system, stripped), model/ (the Lite sampler-step artifact and its manifest)
    --host web   the files `ms-ddpm web` serves, as a static folder: index.html, the page's modules, ort/ (one
                 onnxruntime-web wasm and its loader), model.onnx and model.json

Both get a README.md (how to run or serve it, what it needs, the sha256 of every file) and bundle.json (the same
facts for `ms-ddpm info BUNDLE`, which checks every file against it). The bundle is built in a temporary folder
beside --out and renamed into place; an archive is written atomically, with sorted entries, fixed times and
owners, so one artifact always gives the same bytes.
"""
from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

from .errors import ToolkitError
from .files import atomic_path, sha256_file
from .manifest import Manifest, manifest_path_for
from .progress import progress_bar

HOSTS = ("cpp", "web")
BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1
HOST_BINARY = Path(__file__).resolve().parent / "hosts" / "cpp" / "build" / "bin" / "ddpm-sample"
# Shared libraries every Debian/Ubuntu system has (glibc, GCC's runtime, zlib: packages of priority "required"),
# so the C++ bundle does not ship them.
BASE_LIBRARIES = ("linux-vdso.so.1", "ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0",
                  "librt.so.1", "libstdc++.so.6", "libgcc_s.so.1", "libz.so.1")
# Opened when present, not needed: MindSpore Lite's NUMA support (it runs without it, same images).
OPTIONAL_LIBRARIES = ("libnuma.so.1",)
# Loaded by MindSpore Lite with dlopen, so not in ldd's list: without it Lite cannot build a model
# ("Get real path of libmsplugin-ge-litert.so failed").
LITE_PLUGINS = ("libmsplugin-ge-litert_python.so",)
ARCHIVES = {".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz"}
ARCHIVE_MTIME = 0  # every entry's time in an archive: the bytes depend only on the files


@dataclass
class Library:
    """A shared library of the C++ bundle: where it was found, its size there, its size as shipped."""

    name: str
    source: Path
    source_bytes: int
    shipped_bytes: int = 0


def bundle(artifact: Path, host: str, out: Path, tar: bool = False, progress: bool = True) -> List[str]:
    """Write the bundle of `artifact` for `host` to `out` (a folder, or with `tar` an archive); returns its summary."""
    if host not in HOSTS:
        raise ToolkitError(f"--host must be one of {', '.join(HOSTS)}, got {host!r}")
    out = Path(out)
    compression = _check_out(out, tar)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        top = staging / _folder_name(out, compression)
        top.mkdir()
        summary = (_fill_cpp if host == "cpp" else _fill_web)(Path(artifact), top)
        if compression is None:
            os.rename(top, out)  # onto nothing, or onto an empty folder
        else:
            _write_archive(top, out, compression, progress)
            summary.append(f"archive: {out} ({_megabytes(out.stat().st_size)}, {compression})")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _check_out(out: Path, tar: bool) -> Optional[str]:
    """The archive's compression (None: a folder), once `out` is known to be a new bundle's place."""
    suffix = next((suffix for suffix in ARCHIVES if out.name.endswith(suffix)), None)
    if tar and suffix is None:
        raise ToolkitError(f"--out {out}: with --tar, name the archive {out.name}.tar.xz or {out.name}.tar.gz")
    if not tar and suffix is not None:
        raise ToolkitError(f"--out {out} names an archive: add --tar, or give a folder name")
    if out.is_dir() and any(out.iterdir()) or out.exists() and not out.is_dir() or out.is_symlink():
        raise ToolkitError(f"--out {out} exists and is not an empty folder: give a new name (a bundle is never merged "
                           "into other files)")
    if not out.parent.is_dir():
        raise ToolkitError(f"output directory does not exist: {out.parent}")
    if not os.access(out.parent, os.W_OK):
        raise ToolkitError(f"output directory is not writable: {out.parent}")
    return ARCHIVES[suffix] if tar else None


def _folder_name(out: Path, compression: Optional[str]) -> str:
    """The bundle's folder: `out` itself, or the archive's one top-level folder (its name without the suffix)."""
    if compression is None:
        return out.name
    return next(out.name[:-len(suffix)] for suffix in ARCHIVES if out.name.endswith(suffix))


# ---- the C++ host ----------------------------------------------------------------------------------------
def _fill_cpp(artifact: Path, top: Path) -> List[str]:
    from .mslite.build import LITE_VERSION
    from .pipeline import load_step_artifact

    artifact, manifest = load_step_artifact(artifact, "mslite", "the C++ host")
    if not HOST_BINARY.is_file():
        raise ToolkitError(f"the C++ host is not built ({HOST_BINARY} is missing): run `make hosts` in the checkout")
    (top / "bin").mkdir()
    (top / "lib").mkdir()
    shutil.copyfile(HOST_BINARY, top / "bin" / HOST_BINARY.name)
    (top / "bin" / HOST_BINARY.name).chmod(0o755)
    libraries = _host_libraries()
    for library in libraries:
        library.shipped_bytes = _copy_library(library.source, top / "lib" / library.name)
    model = _copy_model(artifact, top / "model")
    facts = {"host": "cpp", "artifact": model, "manifest": f"{model}.json", "lite_version": LITE_VERSION, "base_system": list(BASE_LIBRARIES),
             "optional_system": list(OPTIONAL_LIBRARIES),
             "run": f"bin/ddpm-sample --model {model} --n 16 --seed 0 --out grid.png",
             "requires": _symbol_versions(top), "files": _file_table(top)}
    _write_description(top, manifest, facts, _cpp_readme(manifest, facts, libraries))
    naive, shipped = sum(lib.source_bytes for lib in libraries), sum(lib.shipped_bytes for lib in libraries)
    return [f"bundle: {top.name} (C++ host on MindSpore Lite {LITE_VERSION}, {manifest.sampler['name']} "
            f"{manifest.sampler['steps']} steps): {_megabytes(_tree_bytes(top))}",
            f"lib/: {len(libraries)} libraries, {_megabytes(shipped)} (the loader's closure: {_megabytes(naive)} "
            f"before strip --strip-unneeded)"]


def _host_libraries() -> List[Library]:
    """What ddpm-sample loads beyond the base system: ldd's closure of the dev build, and Lite's plugin."""
    try:
        listing = subprocess.run(["ldd", str(HOST_BINARY)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ToolkitError(f"cannot list the libraries of {HOST_BINARY} with ldd: {exc}") from exc
    found: Dict[str, Path] = {}
    missing: List[str] = []
    for line in listing.splitlines():
        name, arrow, where = line.strip().partition(" => ")
        if not arrow or name in BASE_LIBRARIES:  # no arrow: the vDSO and the loader itself
            continue
        if where == "not found":
            missing.append(name)
        else:
            found[name] = Path(where.rsplit(" (", 1)[0])
    if missing:
        raise ToolkitError(f"the C++ host cannot find {', '.join(missing)}: rebuild it with `make hosts`")
    lite = found["libmindspore-extendrt_python.so"].parent
    found.update({name: lite / name for name in LITE_PLUGINS})
    return [Library(name, path.resolve(), path.resolve().stat().st_size) for name, path in sorted(found.items())]


def _copy_library(source: Path, target: Path) -> int:
    """Copy a shared library, stripped of what the loader does not need where it still has a symbol table."""
    if has_symbol_table(source):
        try:
            subprocess.run(["strip", "--strip-unneeded", "-o", str(target), str(source)], check=True,
                           capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise ToolkitError("strip (binutils) is needed to bundle the C++ host") from exc
        except subprocess.CalledProcessError as exc:
            raise ToolkitError(f"strip failed on {source}: {exc.stderr.strip()}") from exc
    else:
        shutil.copyfile(source, target)
    target.chmod(0o644)
    return target.stat().st_size


def has_symbol_table(path: Path) -> bool:
    """Whether a 64-bit little-endian ELF file has a .symtab section (section type 2), i.e. is not stripped."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise ToolkitError(f"{path} is not a 64-bit little-endian ELF library")
        offset, size, count = (int.from_bytes(header[a:b], "little") for a, b in ((0x28, 0x30), (0x3A, 0x3C), (0x3C, 0x3E)))
        handle.seek(offset)
        table = handle.read(size * count)
    return any(int.from_bytes(table[i * size + 4:i * size + 8], "little") == 2 for i in range(count))


def _symbol_versions(top: Path) -> Dict[str, str]:
    """The newest glibc and libstdc++ symbol versions that the bundle's binary and libraries ask for."""
    wanted = {"glibc": (rb"GLIBC_2\.(\d+)", "GLIBC_2.{}"), "libstdc++": (rb"GLIBCXX_3\.4\.(\d+)", "GLIBCXX_3.4.{}")}
    newest = {name: 0 for name in wanted}
    for path in [top / "bin" / HOST_BINARY.name, *sorted((top / "lib").iterdir())]:
        data = path.read_bytes()
        for name, (pattern, _) in wanted.items():
            newest[name] = max([newest[name], *(int(version) for version in re.findall(pattern, data))])
    return {name: text.format(newest[name]) for name, (_, text) in wanted.items()}


def _copy_model(artifact: Path, folder: Path) -> str:
    """The artifact and its manifest into `folder`; returns the artifact's path in the bundle."""
    folder.mkdir()
    shutil.copyfile(artifact, folder / artifact.name)
    shutil.copyfile(manifest_path_for(artifact), manifest_path_for(folder / artifact.name))
    return f"{folder.name}/{artifact.name}"


def _cpp_readme(manifest: Manifest, facts: Dict, libraries: List[Library]) -> str:
    rows = "\n".join(f"| `lib/{lib.name}` | {lib.shipped_bytes / 1e6:.1f} MB | {lib.source_bytes / 1e6:.1f} MB |"
                     for lib in libraries)
    return f"""# ddpm-sample: {_model_in_words(manifest)}, on MindSpore Lite {facts['lite_version']}, no Python

Run it from anywhere: the binary finds its libraries in `../lib` beside itself (RPATH `$ORIGIN/../lib`), so nothing
is installed and no variable is set. The same seed gives the same images as `Sampler.sample` on this artifact.

    {facts['run']}
    bin/ddpm-sample --help       # --frames DIR (each step's x0), --noise FILE, --dump-float, --threads
    bin/ddpm-sample --version

## What it needs from the system

x86_64 Linux with glibc symbols up to {facts['requires']['glibc']} and libstdc++ up to {facts['requires']['libstdc++']}
(Debian 12, Ubuntu 22.04 or newer), and these libraries of the base system, which the bundle does not ship:
{', '.join(f'`{name}`' for name in BASE_LIBRARIES)} (glibc, GCC's runtime and zlib: on every Debian and Ubuntu
system). {', '.join(f'`{name}`' for name in OPTIONAL_LIBRARIES)}: opened when present (MindSpore Lite's NUMA
support), not needed.

## What it ships

`lib/` holds exactly the shared libraries that the binary loads beyond that list (traced with `strace`): the
loader's closure of `libmindspore-extendrt_python.so` from the MindSpore Lite wheel, the plug-in it opens with
dlopen, and the build machine's `libpng16.so.16` (minimal systems lack it). Libraries that still had a symbol
table were stripped with `strip --strip-unneeded`.

| file | shipped | in the wheel or system |
|---|---|---|
{rows}

## sha256
{_sha256_list(facts['files'])}
"""


# ---- the web page ----------------------------------------------------------------------------------------
def _fill_web(artifact: Path, top: Path) -> List[str]:
    from .web import HEADERS, routes

    table = routes(artifact)  # the files `ms-ddpm web` serves, after its checks of the artifact
    manifest = Manifest.load(table["/model.json"][0])
    for url, (source, _) in sorted(table.items()):
        target = top / ("index.html" if url == "/" else url.lstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644)
    isolation = {name: value for name, value in HEADERS.items() if name.startswith("Cross-Origin")}
    facts = {"host": "web", "artifact": "model.onnx", "manifest": "model.json", "headers": isolation, "files": _file_table(top)}
    _write_description(top, manifest, facts, _web_readme(manifest, facts))
    return [f"bundle: {top.name} (web page on onnxruntime-web, {manifest.sampler['name']} "
            f"{manifest.sampler['steps']} steps): {len(facts['files'])} files, {_megabytes(_tree_bytes(top))}"]


def _web_readme(manifest: Manifest, facts: Dict) -> str:
    headers = "\n".join(f"    {name}: {value}" for name, value in facts["headers"].items())
    return f"""# In the browser on onnxruntime-web: {_model_in_words(manifest)}

A static folder: put it on any web server, at any path, and open `index.html`. The page loads only its own files
(no CDN) and samples in the visitor's browser; the same seed gives the same images as `Sampler.sample`.

    python3 -m http.server --directory . 8000      # then http://127.0.0.1:8000/ (single-threaded, see below)

## Headers

wasm threads need a cross-origin isolated page: send these two headers with every file of the folder, and the page
runs on min(4, cores) threads. Without them it still samples, on one thread, and says so on the page.

{headers}

For example nginx: `add_header Cross-Origin-Opener-Policy same-origin always;` and `add_header
Cross-Origin-Embedder-Policy require-corp always;`; Apache: `Header set Cross-Origin-Opener-Policy "same-origin"` and
`Header set Cross-Origin-Embedder-Policy "require-corp"`.

The server must send `.mjs` as `text/javascript` and `.wasm` as `application/wasm` (Python's `http.server`,
nginx and Apache do by default). `?threads=N` in the URL asks for N threads.

## sha256
{_sha256_list(facts['files'])}
"""


# ---- description, checks, archive ----------------------------------------------------------------------------
def _write_description(top: Path, manifest: Manifest, facts: Dict, readme: str) -> None:
    """README.md, then bundle.json: the facts, with the sha256 and size of every other file (facts' table of the
    files before the README, and README.md's own entry)."""
    from importlib import metadata

    (top / "README.md").write_text(readme)
    description = {"bundle_format": BUNDLE_FORMAT, "toolkit_version": metadata.version("ms-ddpm"), **facts,
                   "sampler": {key: manifest.sampler[key] for key in ("name", "steps", "eta", "spacing")},
                   "files": {**facts["files"], **_file_table(top, ["README.md"])}}
    (top / BUNDLE_FILE).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def _file_table(top: Path, paths: Optional[List[str]] = None) -> Dict[str, Dict[str, object]]:
    """sha256 and size of `paths` in `top` (default: every file but bundle.json)."""
    return {path: {"sha256": sha256_file(top / path), "bytes": (top / path).stat().st_size}
            for path in (paths if paths is not None else _files(top)) if path != BUNDLE_FILE}


def _files(top: Path) -> List[str]:
    return sorted(path.relative_to(top).as_posix() for path in top.rglob("*") if path.is_file())


def _sha256_list(files: Dict[str, Dict[str, object]]) -> str:
    return "\n".join(f"    {entry['sha256']}  {path}" for path, entry in files.items())


def describe_bundle(folder: Path) -> Tuple[List[str], bool]:
    """A bundle in words (`ms-ddpm info BUNDLE`), and whether every file matches bundle.json and the model its manifest."""
    from .config import parse_json

    path = folder / BUNDLE_FILE
    try:
        facts = parse_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"cannot read {path}: {exc}") from exc
    if not isinstance(facts, dict) or facts.get("bundle_format") != BUNDLE_FORMAT or not isinstance(facts.get("files"), dict):
        raise ToolkitError(f"{path} is not a bundle description of format {BUNDLE_FORMAT}")
    sizes = sum(entry.get("bytes", 0) for entry in facts["files"].values())
    lines = [f"bundle: {folder} ({facts.get('host')} host, made by ms-ddpm {facts.get('toolkit_version')})",
             f"run: {facts.get('run', 'serve the folder with any web server and open index.html (README.md)')}",
             f"files: {len(facts['files'])} listed, {_megabytes(sizes)}"]
    if facts.get("host") == "cpp":
        lines.append(f"needs: x86_64 Linux, {', '.join(facts['requires'].values())}, and the base system's "
                     f"{', '.join(facts['base_system'])}")
    problems = [f"sha256: {problem}: {name}" for name, problem in _check_files(folder, facts["files"]) if problem]
    manifest = Manifest.load(folder / facts["manifest"])
    lines += [f"model: {line}" for line in manifest.describe()]
    line, model_ok = manifest.check_artifact(folder / facts["artifact"])
    ok = model_ok and not problems
    return lines + problems + [line, f"bundle files: {'OK' if not problems else 'MISMATCH'}"], ok


def _check_files(folder: Path, listed: Dict[str, Dict]) -> Iterator[Tuple[str, Optional[str]]]:
    """(path, problem or None) for every file bundle.json lists, then for every file it does not list."""
    for path, entry in sorted(listed.items()):
        file = folder / path
        if not file.is_file():
            yield path, "MISSING"
            continue
        actual = sha256_file(file)
        yield path, None if actual == entry.get("sha256") else f"MISMATCH (file {actual}, bundle.json {entry.get('sha256')})"
    for path in _files(folder):
        if path not in listed and path != BUNDLE_FILE:
            yield path, "NOT LISTED in bundle.json"


def _write_archive(top: Path, out: Path, compression: str, progress: bool) -> None:
    """`top` as a tar archive at `out`: sorted entries, fixed mtime, root owner without names, 0755/0644 modes."""
    entries = [top, *sorted(top.rglob("*"), key=lambda path: path.relative_to(top).as_posix())]
    total = sum(path.stat().st_size for path in entries if path.is_file())
    with atomic_path(out) as tmp, open(tmp, "wb") as raw, _compressor(raw, compression) as stream, \
            tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as archive, \
            progress_bar(progress, total=total, unit="B", unit_scale=True, desc=f"writing {out.name}") as bar:
        for path in entries:
            info = tarfile.TarInfo(path.relative_to(top.parent).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = ARCHIVE_MTIME, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
                continue
            info.size, info.mode = path.stat().st_size, 0o755 if os.access(path, os.X_OK) else 0o644
            with open(path, "rb") as handle:
                archive.addfile(info, handle)
            bar.update(info.size)


def _compressor(raw: BinaryIO, compression: str) -> BinaryIO:
    """gzip without a name or time in its header (level 6), or xz (preset 6): both deterministic."""
    if compression == "gz":
        return gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0)
    return lzma.LZMAFile(raw, "wb", preset=6)


def _model_in_words(manifest: Manifest) -> str:
    model, sampler = manifest.run_config.model, manifest.sampler
    return (f"a DDPM of {model.image_size}x{model.image_size} images ({sampler['name']}, {sampler['steps']} U-Net "
            "calls per image)")


def _tree_bytes(top: Path) -> int:
    return sum(path.stat().st_size for path in top.rglob("*") if path.is_file())


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
