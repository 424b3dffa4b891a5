"""`cli.py bench --quick` on a tiny untrained model, the benchmark's ONNX transformations, and option errors."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import assert_clean_error, run_cli

SECTIONS = ("## Targets", "## U-Net, one call", "## End to end: 4 images", "## MindSpore training step", "## Cold start")


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
    tmp = tmp_path_factory.mktemp("bench")
    result = run_cli("bench", "--quick", "--out", tmp / "bench", "--work", tmp / "work", "--batches", "1,4",
                     "--repeats", "2", "--images", "4", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return (tmp / "bench.md").read_text(), json.loads((tmp / "bench.json").read_text())


def test_bench_quick_writes_a_well_formed_table(quick_bench):
    markdown, _ = quick_bench
    for section in SECTIONS:
        assert section in markdown, section
    tables = _tables(markdown)
    assert len(tables) >= 5
    for table in tables:
        assert re.fullmatch(r"(---\|?)+", "|".join(table[1])), table[1]  # the separator row
        assert all(len(row) == len(table[0]) for row in table), table
    unet = next(t for t in tables if t[0][:2] == ["backend", "batch"])
    assert {row[0] for row in unet[2:]} >= {"onnxruntime", "mindspore AVX2", "mindspore ALL"}


def test_bench_quick_json_has_every_measurement(quick_bench):
    _, result = quick_bench
    assert result["model"]["gflop_per_image"] > 0 and result["model"]["timesteps"] == 200
    assert result["peak"]["gflops_best"] > 0
    backends = {row["backend"] for row in result["unet"]}
    assert {"onnxruntime", "mindspore AVX2", "mindspore ALL"} <= backends
    assert "mslite" in backends or any("mslite" in key for key in result["errors"])
    for row in result["unet"]:
        assert row["batch"] in (1, 4) and 0 < row["min_s"] <= row["median_s"] and row["n"] >= 2
        assert 0 < row["peak_fraction_best"]
    runs = result["end_to_end"]["runs"]
    assert [(r["scheduler"], r["steps"]) for r in runs if not r["extrapolated"]] == \
        [("ddpm", 200), ("ddim", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10)]
    assert any(r["extrapolated"] and r["path"].startswith("MindSpore reference") for r in runs)
    assert {row["isa"] for row in result["training"]} == {"AVX2", "ALL"}
    assert [row["backend"] for row in result["cold_start"]][0] == "onnxruntime"
    assert result["duration_s"] > 0 and result["load_average_start"] is not None


def test_bench_rejects_unknown_backends(tmp_path):
    assert_clean_error(run_cli("bench", "--quick", "--backends", "tensorrt", "--out", tmp_path / "b"), "--backends")


def test_folding_the_time_mlp_is_exact(tiny_checkpoint, tmp_path):
    from ms_ddpm.bench.variants import fold_time_mlp
    from ms_ddpm.export.pipeline import ExportRequest, export_checkpoint

    source = export_checkpoint(tiny_checkpoint, ExportRequest(format="onnx", out=tmp_path / "unet.onnx", gate=None),
                               log=lambda line: None)
    folded = tmp_path / "folded.onnx"
    summary = fold_time_mlp(source, folded, timesteps=10)
    assert summary["folded_nodes"] > 0 and summary["tables"] > 0
    ops = {node.op_type for node in onnx.load(str(folded)).graph.node}
    assert "Sin" not in ops and "Cos" not in ops and "Gather" in ops
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (source, folded)]
    rng = np.random.default_rng(0)
    for batch in (1, 3, 10):
        x = rng.standard_normal((batch, 1, 8, 8), dtype=np.float32)
        t = rng.integers(0, 10, batch).astype(np.int32)
        want, got = (s.run(None, {"x": x, "t": t})[0] for s in sessions)
        np.testing.assert_allclose(got, want, atol=1e-5)
