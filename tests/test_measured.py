"""`ms-ddpm samplers`: one line per scheduler and spacing, with the measured quality that docs/quality.md's tables
show, each row a valid `ms-ddpm quality --rows` spec."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import run_cli
from ms_ddpm.bench.quality import parse_rows
from ms_ddpm.runtime.measured import MEASURED
from ms_ddpm.runtime.schedulers import DEFAULT_SCHEDULER, DEFAULT_SPACING, SCHEDULERS, SPACINGS

QUALITY_DOC = Path(__file__).resolve().parents[1] / "docs" / "quality.md"


def test_every_measured_row_is_a_quality_row_shown_in_the_docs_with_the_same_interval():
    doc = QUALITY_DOC.read_text()
    for measured, row in zip(MEASURED, parse_rows(",".join(m.row for m in MEASURED))):
        assert (row.scheduler, row.steps, row.spacing) == (measured.scheduler, measured.calls, measured.spacing)
        cells = f"| {row.label} | {measured.calls} | {measured.n} |"
        interval = f"{measured.percent:+.1f}% [{measured.low:+.1f}%, {measured.high:+.1f}%]"
        assert any(line.startswith(cells) and interval in line for line in doc.splitlines()), (cells, interval)


def test_samplers_lists_each_scheduler_and_spacing_once_with_its_measured_rows():
    listed = run_cli("samplers")
    assert listed.returncode == 0, listed.stderr[-2000:]
    lines = listed.stdout.splitlines()[1:]
    assert [tuple(line[2:].split()[:2]) for line in lines] == [(s, p) for s in SCHEDULERS for p in SPACINGS]
    default = [line for line in lines if line.startswith("*")]
    assert len(default) == 1 and default[0][2:].split()[:2] == [DEFAULT_SCHEDULER, DEFAULT_SPACING]
    for measured in MEASURED:
        line = next(line for line in lines if line[2:].split()[:2] == [measured.scheduler, measured.spacing])
        assert measured.describe() in line
    assert all(re.search(r"\| (not measured|\d+ calls)", line) for line in lines)
