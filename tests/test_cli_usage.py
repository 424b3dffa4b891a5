"""The CLI as a new user meets it: usage errors, output names, paths checked before MindSpore loads, --version,
--debug, `info`, missing extras, and the oneDNN setting that must never ask for an ISA the CPU lacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from PIL import Image

from conftest import assert_clean_error, run_cli
from ms_ddpm.runtime.errors import ToolkitError

# Runs CLI command lines one after the other in one fresh process (no MindSpore imported by the test runner), and
# reports for each: exit code, stderr, and whether MindSpore got imported.
IN_ONE_PROCESS = """
import contextlib, io, json, sys
from ms_ddpm.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv, err = ["ms-ddpm", *argv], io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue(), "mindspore" in sys.modules])
print(json.dumps(results))
"""


def _in_one_process(cases, cwd: Path) -> list:
    result = subprocess.run([sys.executable, "-c", IN_ONE_PROCESS, json.dumps([[str(a) for a in c] for c in cases])],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["sample", "--n", "abc"], "Invalid value for '--n'"),
    (["sample", "--nope"], "No such option: --nope"),
    (["noise"], "Missing argument"),
    (["info"], "Missing argument"),
    (["train", "--steps", "many"], "Invalid value for '--steps'"),
    (["frobnicate"], "No such command"),
])
def test_usage_errors_are_one_line_and_exit_2(args, fragment):
    assert_clean_error(run_cli(*args), fragment)


def test_help_version_and_debug():
    assert run_cli("--help").returncode == 0 and run_cli("train", "--help").returncode == 0
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"ms-ddpm {metadata.version('ms-ddpm')}"
    debug = run_cli("--debug", "sample", "--checkpoint", "/nope/run")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == "error: checkpoint not found: /nope/run"


def test_bad_paths_and_output_names_fail_before_mindspore_loads_and_write_nothing(tmp_path, tiny_exports):
    artifact = tiny_exports["onnx"]
    Image.new("RGB", (16, 16)).save(tmp_path / "cat.png")
    (tmp_path / "folder").mkdir()
    cases = [  # (command line, the error's fragment)
        (["sample", "--checkpoint", "/nope/run"], "checkpoint not found: /nope/run"),
        (["export", "--checkpoint", "/nope/run", "--format", "onnx"], "checkpoint not found"),
        (["verify", "/nope/unet.onnx", "--checkpoint", "/nope/run"], "artifact not found"),
        (["train", "--out", "nowhere", "--resume"], "checkpoint not found: nowhere/checkpoints/latest.ckpt"),
        (["noise", "missing.png"], "image not found"),
        (["info", "missing.onnx"], "artifact not found"),
        (["sample", "--artifact", artifact.parent], "is a folder: give the model file"),
        (["sample", "--artifact", f"{artifact}.json"], f"give the model file, not its manifest: {artifact}"),
        (["sample", "--artifact", artifact, "--out", "d/"], "--out d: no file suffix"),
        (["sample", "--artifact", artifact, "--out", "folder"], "--out folder is a folder"),
        (["sample", "--artifact", artifact, "--out", "g.png", "--gif", "g.png"], "name a .gif file"),
        (["sample", "--artifact", artifact, "--out", "g.png", "--npz", "./g.png"], "--out and --npz name the same file"),
        (["sample", "--artifact", artifact, "--out", "g.bmp"], "unknown image suffix '.bmp'"),
        (["sample", "--checkpoint", "/nope/run", "--out", "g.tiff"], "checkpoint not found"),
        (["noise", "cat.png", "--out", "strip.gif"], "unknown image suffix '.gif'"),
        (["noise", "cat.png", "--out", "folder"], "is a folder"),
    ]
    results = _in_one_process([args for args, _ in cases], cwd=tmp_path)
    for (args, fragment), (code, stderr, mindspore_loaded) in zip(cases, results):
        assert code == 2 and fragment in _one_error_line(stderr), (args, code, stderr)
        assert not mindspore_loaded, f"{args}: MindSpore was imported before the bad input was noticed"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cat.png", "folder"]  # nothing written


@pytest.mark.parametrize("suffix, format_name", [(".jpg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")])
def test_the_grid_is_written_in_the_format_its_suffix_names(tiny_exports, tmp_path, suffix, format_name):
    out = tmp_path / f"grid{suffix}"
    result = run_cli("sample", "--artifact", tiny_exports["onnx"], "--scheduler", "ddim", "--steps", "3", "--n", "4",
                     "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(out) as picture:
        assert picture.format == format_name


def test_info_describes_the_manifest(tiny_exports):
    for given in (tiny_exports["onnx"], Path(f"{tiny_exports['onnx']}.json")):
        result = run_cli("info", given)
        assert result.returncode == 0, result.stderr[-2000:]
        facts = dict(line.split(": ", 1) for line in result.stdout.splitlines())
        assert facts["artifact"].startswith("unet.onnx (onnx), sha256 ") and len(facts["artifact"].split()[-1]) == 64
        assert "image_size 8" in facts["model"] and "T = 10" in facts["diffusion"]
        assert facts["batch"].startswith("dynamic") and facts["gate"].startswith("NOT VERIFIED")
        assert facts["opset"].isdigit() and "source checkpoint sha256" in facts


def test_a_missing_extra_is_named(monkeypatch):
    import importlib.util

    from ms_ddpm.train import require_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    require_extra("train", "mindspore")
    with pytest.raises(ToolkitError, match=r"^this command needs the export extra: pip install 'ms-ddpm\[export\]'$"):
        require_extra("export", "mindspore", "onnx")


# ---- the oneDNN ISA cap --------------------------------------------------------------------------------
AVX512 = {"sse4_2", "avx", "avx2", "avx512f", "avx512bw"}
AVX2 = {"sse4_2", "avx", "avx2"}


@pytest.mark.parametrize("environ, machine, flags, value, reason", [
    ({}, "x86_64", AVX512, "AVX2", "AVX-512 CPU: capped at AVX2"),
    ({}, "x86_64", AVX2, None, "no AVX-512 on this CPU: not needed"),
    ({}, "x86_64", {"sse4_2"}, None, "not needed"),
    ({}, "x86_64", None, None, "CPU flags unknown"),
    ({}, "aarch64", None, None, "n/a (not an x86 CPU)"),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "x86_64", AVX512, None, "ONEDNN_MAX_CPU_ISA=ALL (set by the user)"),
])
def test_the_isa_cap_applies_only_where_the_cpu_has_avx512(environ, machine, flags, value, reason):
    from ms_ddpm.train import cpu_dispatch

    chosen, note = cpu_dispatch(environ, machine, flags)
    assert chosen == value and reason in note, note
    assert chosen is None or "avx512f" in flags  # AVX2 is only ever a cap below what the CPU has


def test_the_package_import_sets_nothing_and_prepare_never_asks_for_an_isa_this_cpu_lacks():
    code = ("import os, json; import ms_ddpm.train.commands, ms_ddpm.export.commands, ms_ddpm.cli; "
            "before = {k: os.environ.get(k) for k in ('ONEDNN_MAX_CPU_ISA', 'GLOG_v')}; "
            "from ms_ddpm.train import prepare_mindspore; from ms_ddpm.runtime.cpu import cpu_flags; note = prepare_mindspore(); "
            "print(json.dumps([before, os.environ.get('ONEDNN_MAX_CPU_ISA'), note, sorted(cpu_flags() or [])]))")
    env = {key: value for key, value in os.environ.items() if key not in ("ONEDNN_MAX_CPU_ISA", "GLOG_v")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    before, isa, note, flags = json.loads(result.stdout)
    assert before == {"ONEDNN_MAX_CPU_ISA": None, "GLOG_v": None}, "importing the package changed the environment"
    assert isa is None or (isa == "AVX2" and "avx512f" in flags and "avx2" in flags), (isa, note)
    assert note.startswith("ONEDNN_MAX_CPU_ISA")
