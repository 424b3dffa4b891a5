"""The numeric gate's pieces, on plain numpy callables (no MindSpore, no export)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from ms_ddpm.export.gate import (DYNAMIC_BATCH_SIZES, GateCase, Thresholds, compare, format_report, gate_batch_sizes,
                         gate_cases, run_gate)
from ms_ddpm.runtime.errors import ToolkitError


def _smooth_eps(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A stand-in 'model': deterministic, depends on both inputs."""
    return np.tanh(x) * (1.0 + t.reshape(-1, 1, 1, 1) / 10.0)


def test_gate_cases_are_deterministic_and_span_every_timestep_range():
    config = tiny_config()
    cases = gate_cases(config, seed=3)
    again = gate_cases(config, seed=3)
    other = gate_cases(config, seed=4)
    assert [len(case.t) for case in cases] == list(DYNAMIC_BATCH_SIZES)
    assert all(np.array_equal(a.x, b.x) and np.array_equal(a.t, b.t) for a, b in zip(cases, again))
    assert not np.array_equal(cases[1].x, other[1].x)
    all_t = np.concatenate([case.t for case in cases])
    assert all_t.min() == 0 and all_t.max() == config.diffusion.timesteps - 1
    assert cases[0].x.dtype == np.float32 and cases[0].t.dtype == np.int32
    assert cases[2].x.shape == (16, 1, 8, 8)


def test_fixed_batch_cases_use_only_that_batch_and_still_span_t():
    cases = gate_cases(tiny_config(), seed=0, batch_sizes=gate_batch_sizes(2))
    assert [len(case.t) for case in cases] == [2, 2, 2]
    all_t = np.concatenate([case.t for case in cases])
    assert all_t.min() == 0 and all_t.max() == 9


def test_compare_reports_the_four_figures():
    reference = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)
    shifted = reference + np.float32(1e-3)
    figures = compare(reference, shifted)
    assert figures["max_abs"] == pytest.approx(1e-3, rel=1e-3)
    assert figures["max_rel"] == pytest.approx(1e-3 / 3.0, rel=1e-3)
    assert 0.99999 < figures["cosine"] < 1.0
    assert figures["psnr_db"] == pytest.approx(20 * np.log10(5.0 / 1e-3), abs=0.01)
    exact = compare(reference, reference.copy())
    assert exact["max_abs"] == 0 and exact["cosine"] == pytest.approx(1.0) and exact["psnr_db"] is None


def test_compare_flags_wrong_shape_and_non_finite_outputs():
    reference = np.zeros((2, 1, 4, 4), np.float32)
    assert "shape" in compare(reference, np.zeros((1, 1, 4, 4), np.float32))["error"]
    assert "NaN" in compare(reference, np.full((2, 1, 4, 4), np.nan, np.float32))["error"]


def test_run_gate_passes_a_faithful_artifact_and_fails_a_perturbed_one():
    cases = gate_cases(tiny_config(), seed=0)
    faithful = run_gate(lambda x, t: _smooth_eps(x, t) + np.float32(1e-6), _smooth_eps, cases, Thresholds(), 0, "test")
    assert faithful.passed and faithful.worst("max_abs") < 1e-5
    perturbed = run_gate(lambda x, t: _smooth_eps(x, t) * np.float32(1.01), _smooth_eps, cases, Thresholds(), 0, "test")
    assert not perturbed.passed and perturbed.worst("max_abs") > 1e-3
    assert "gate: FAIL" in format_report(perturbed) and "gate: PASS" in format_report(faithful)


def test_run_gate_reports_an_artifact_that_raises_as_a_failed_case():
    def broken(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        raise RuntimeError("Got invalid dimensions for input: x")

    case = GateCase(x=np.zeros((2, 1, 8, 8), np.float32), t=np.array([0, 9], np.int32))
    report = run_gate(broken, _smooth_eps, [case], Thresholds(), 0, "test")
    assert not report.passed
    assert "invalid dimensions" in report.cases[0]["error"]
    assert report.to_dict()["worst_max_abs"] is None


@pytest.mark.parametrize("thresholds", [Thresholds(atol=-1.0), Thresholds(atol=float("nan")), Thresholds(min_cosine=1.5)])
def test_thresholds_reject_nonsense(thresholds):
    with pytest.raises(ToolkitError):
        thresholds.validate()
