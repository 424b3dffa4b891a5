"""`cli.py bench --quick` end to end from a folder outside the repository, the harness surviving a failed
worker, the CPU-portability rule, and option errors."""
from __future__ import annotations

import json
import re

import pytest

from conftest import REPO, assert_clean_error, run_cli

SECTIONS = ("## U-Net, one call", "## MindSpore training step", "## End to end: 4 images")


def _tables(markdown: str):
    """Every Markdown table as a list of rows of cells."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """Run from a folder outside the repository, with relative --out and --work."""
    cwd = tmp_path_factory.mktemp("bench-cwd")
    result = run_cli("bench", "--quick", "--out", "bench", "--work", "work", "--batches", "1,4",
                     "--repeats", "2", "--images", "4", cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return cwd, (cwd / "bench.md").read_text(), json.loads((cwd / "bench.json").read_text())


def test_bench_quick_writes_a_well_formed_table(quick_bench):
    cwd, markdown, _ = quick_bench
    for section in SECTIONS:
        assert section in markdown, section
    tables = _tables(markdown)
    assert len(tables) == 3  # U-Net, training step, end to end
    for table in tables:
        assert re.fullmatch(r"(---\|?)+", "|".join(table[1])), table[1]  # the separator row
        assert all(len(row) == len(table[0]) for row in table), table
    unet = next(t for t in tables if t[0][:2] == ["backend", "batch"])
    labels = {row[0] for row in unet[2:]}
    assert "mindspore" in labels and any(label.startswith("onnxruntime") for label in labels)
    assert any(label.startswith("openvino") for label in labels)  # timed when installed, else "not installed"
    assert "**CPU**: " in markdown and "flags: " in markdown
    assert list((cwd / "work").glob("unet*.onnx")) and not (REPO / "work").exists()


def test_bench_quick_json_has_every_measurement(quick_bench):
    _, _, result = quick_bench
    assert result["model"]["gflop_per_image"] > 0 and result["model"]["timesteps"] == 200
    assert result["peak"]["gflops_best"] > 0 and result["machine"]["cpu"]
    backends = {row["backend"] for row in result["unet"]}
    assert "mindspore" in backends and any(b.startswith("onnxruntime") for b in backends)
    assert "mslite" in backends or any("mslite" in key for key in result["errors"])
    for row in result["unet"]:
        assert row["batch"] in (1, 4) and 0 < row["min_s"] <= row["median_s"] and row["n"] >= 2
        assert 0 < row["peak_fraction_best"]
    training = result["training"]
    assert {(r["step"], r["batch"]) for r in training} == \
        {(step, batch) for step in ("train step", "train step (decomposed GroupNorm)") for batch in (16, 64)}
    for row in training:  # 3x the forward FLOPs of the same model, against the peak of the same run
        assert row["gflops_best"] * row["min_s"] == pytest.approx(3 * result["model"]["gflop_per_image"] * row["batch"])
        assert 0 < row["peak_fraction_best"] and row["speedup"] > 0
    runs = result["end_to_end"]["runs"]
    assert [(r["scheduler"], r["steps"]) for r in runs] == \
        [("ddpm", 200), ("ddim", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10)]
    assert all(0 < r["unet_s"] < r["seconds"] for r in runs)
    assert result["duration_s"] > 0 and result["load_average_start"] is not None
    assert result["command"].startswith("python cli.py bench --quick --out bench")  # the program as it was called


def test_bench_records_no_absolute_path(quick_bench):
    """The untrained model is named as such and the exports by their file names in --work: nothing in the report
    depends on the folder the bench ran in."""
    cwd, markdown, result = quick_bench
    assert result["models"]["checkpoint"] is None and "untrained (random weights)" in markdown
    assert {a["file"] for a in result["models"]["artifacts"]} >= {"unet-optimized.onnx", "unet-plain.onnx"}
    for text in (json.dumps(result), markdown):
        assert str(cwd) not in text and "/tmp/" not in text


def test_a_report_without_a_peak_says_so(quick_bench):
    from ms_ddpm.bench.latency import render_markdown

    _, _, result = quick_bench
    result = {**result, "peak": {"size": 2048, "engine": "onnxruntime MatMul (MLAS)"},
              "unet": [{**row, "peak_fraction_best": None, "peak_fraction_median": None} for row in result["unet"]]}
    markdown = render_markdown(result)
    assert "**not measured**" in markdown and "n/a (n/a)" in markdown


def test_a_failed_worker_leaves_the_others_running():
    from ms_ddpm.bench.harness import rotate, start_workers

    errors = {}
    specs = {"peak": {"kind": "matmul", "size": 64}, "broken": {"kind": "matmul", "size": -1}}
    workers = start_workers(specs, errors)
    try:
        assert list(workers) == ["peak"] and errors["broken"].startswith("broken: cannot open matmul")
        times = rotate(workers, "time", {}, repeats=3, budget_s=1.0, errors=errors)
        assert len(times["peak"]) == 3
    finally:
        for worker in workers.values():
            worker.close()


def test_a_failing_child_is_one_error_line():
    import os

    from ms_ddpm.bench.harness import in_child
    from ms_ddpm.runtime.errors import ToolkitError

    with pytest.raises(ToolkitError, match=r"^mkdir failed in a child process: FileNotFoundError: "):
        in_child(os.mkdir, path="/nonexistent/a/b")
    with pytest.raises(ToolkitError, match=r"^abort failed in a child process: BrokenProcessPool: "):
        in_child(os.abort)  # the child dies


# An assignment of a CPU-dispatch variable: `VAR = ...`, `{"VAR": ...}`, `setdefault("VAR", ...)`, `environ["VAR"] = ...`.
_DISPATCH = re.compile(r"""(OPENBLAS_CORETYPE|ONEDNN_MAX_CPU_ISA|DNNL_MAX_CPU_ISA|MKL_ENABLE_INSTRUCTIONS)
                           (\s*=(?!=)|["']\s*[:,]|["']\s*\]\s*=(?!=))""", re.VERBOSE)
_FORCED_CORE = re.compile(r"\b(SkylakeX|Haswell|Zen\d?|Cooperlake|SapphireRapids|AVX512_CORE\w*)\b", re.IGNORECASE)


def test_no_code_forces_an_instruction_set():
    """No OpenBLAS core type and no ISA above AVX2 anywhere in the package; oneDNN is capped only by train/,
    never raised."""
    allowed = {REPO / "train" / "__init__.py"}
    sources = [*REPO.glob("*.py"), *(p for part in ("train", "export", "runtime", "bench")
                                     for p in (REPO / part).rglob("*.py"))]
    assert len(sources) > 30
    for path in sources:
        text = path.read_text(errors="replace")
        assert not _FORCED_CORE.search(text), (path, _FORCED_CORE.search(text))
        for match in _DISPATCH.finditer(text):
            assert match.group(1) == "ONEDNN_MAX_CPU_ISA" and path in allowed, (path, match.group(0))


def test_bench_rejects_unknown_backends(tmp_path):
    assert_clean_error(run_cli("bench", "--quick", "--backends", "tensorrt", "--out", tmp_path / "b"), "--backends")


def test_bench_refuses_a_missing_output_folder_before_any_work(tmp_path):
    result = run_cli("bench", "--quick", "--out", "missing/b", "--work", "scratch", cwd=tmp_path)
    assert_clean_error(result, "missing")
    assert list(tmp_path.iterdir()) == []


def test_the_report_names_the_program_as_it_was_called(monkeypatch):
    import typer

    from ms_ddpm.bench.commands import command_line

    monkeypatch.setattr("sys.argv", ["/venv/bin/ms-ddpm", "bench", "--out", "my results"])
    root = typer.Context(typer.core.TyperCommand("ms-ddpm"), info_name="ms-ddpm")
    assert command_line(typer.Context(typer.core.TyperCommand("bench"), parent=root, info_name="bench")) \
        == "ms-ddpm bench --out 'my results'"
