"""Paired FD differences: the bootstrap interval covers a known difference and is narrow; row parsing."""
import numpy as np
import pytest

from conftest import assert_clean_error, run_cli

from ms_ddpm.bench.quality import DEFAULT_ROWS, FeatureStats, Row, paired_differences, parse_rows
from ms_ddpm.runtime.errors import ToolkitError

D, N, FRACTION = 8, 2000, 0.2
REFERENCE = FeatureStats(np.zeros(D), np.eye(D), 10 ** 9)  # the population N(0, I)
MEAN = np.full(D, 1 / np.sqrt(D))  # the baseline set's mean: its own FD to the reference is about 1
SHIFT = np.eye(D)[0]  # added to a fraction of the baseline's images to make the other set


def _true_difference() -> float:
    """FD only sees mean and covariance: the shifted mixture has mean MEAN + f v and covariance I + f(1-f) v v^T."""
    stretched = 1 + FRACTION * (1 - FRACTION) * SHIFT @ SHIFT
    moved = MEAN + FRACTION * SHIFT
    return float(moved @ moved - MEAN @ MEAN + (1 - np.sqrt(stretched)) ** 2)


def _sets(seed: int):
    base = np.random.default_rng(seed).standard_normal((N, D)) + MEAN
    shifted = base.copy()
    shifted[: int(FRACTION * N)] += SHIFT
    return base, shifted


def test_paired_interval_covers_the_true_difference_and_is_narrow():
    """95% intervals over 8 seeds: at least 6 cover the truth (P(fewer) < 0.1% at 95% coverage)."""
    truth = _true_difference()
    diffs = [paired_differences(_sets(seed), REFERENCE, resamples=100, seed=seed)[1] for seed in range(8)]
    assert sum(d.low <= truth <= d.high for d in diffs) >= 6, (truth, diffs)
    assert all(d.low < d.value < d.high for d in diffs)
    # unpaired resampling (or resampling one set only) gives a half-width of about 0.13 here
    assert max(d.high - d.low for d in diffs) / 2 < 0.05, diffs


def test_a_set_against_itself_is_exactly_zero():
    sets = _sets(0)
    same = paired_differences([sets[0], sets[0].copy()], REFERENCE, resamples=20)[1]
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    assert paired_differences(sets, REFERENCE, baseline=1, resamples=20)[1].value == 0.0
    with pytest.raises(ValueError, match="same number"):
        paired_differences([sets[0], sets[1][:-1]], REFERENCE, resamples=20)


def test_rows_parse_with_their_options():
    rows = parse_rows("ddpm:200, ddim:50:eta=1:spacing=linspace:clip,dpmpp3m:10")
    assert rows == [Row("ddpm", 200), Row("ddim", 50, 1.0, "linspace", True), Row("dpmpp3m", 10)]
    assert [r.label for r in rows] == ["DDPM-200", "DDIM-50 (eta 1, linspace, clip_x0)", "DPM-Solver++(3M)-10"]
    defaults = parse_rows(DEFAULT_ROWS)
    assert defaults[0] == Row("ddpm", 200) and len({r.slug for r in defaults}) == len(defaults) == 13


@pytest.mark.parametrize("spec", ["ddpm", "ddpm:0", "ddpm:x", "euler:10", "ddpm:10:eta=1", "ddim:10:eta=-1",
                                  "ddim:10:spacing=odd", "ddim:10:clipped", " , "])
def test_bad_rows_are_errors(spec):
    with pytest.raises(ToolkitError):
        parse_rows(spec)


def test_bad_rows_give_one_error_line_before_any_work(tiny_checkpoint, tmp_path):
    assert_clean_error(run_cli("quality", "--checkpoint", tiny_checkpoint, "--rows", "ddpm:10,ddim:5:eta=x",
                               "--out", tmp_path / "q", cwd=tmp_path), "ddim:5:eta=x")
    assert list(tmp_path.iterdir()) == []
