"""The offline quality metric: Fréchet distance, classifier score, class histogram (no MindSpore)."""
import numpy as np
import pytest

from ms_ddpm.bench.quality import FeatureStats, class_histogram, classifier_score, frechet_distance


def _features(n=4000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mixing + rng.standard_normal(d)


def test_frechet_distance_is_zero_for_identical_sets():
    features = _features()
    stats = FeatureStats.of(features)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(FeatureStats.of(features), FeatureStats.of(features.copy())) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_grows_with_a_shift_of_the_mean():
    features = _features()
    base = FeatureStats.of(features)
    direction = np.ones(features.shape[1]) / np.sqrt(features.shape[1])
    distances = [frechet_distance(base, FeatureStats.of(features + shift * direction)) for shift in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(distances, distances[1:]))
    # same covariance: the distance is exactly the squared shift of the mean
    assert distances[1:] == pytest.approx([0.25, 1.0, 4.0, 16.0], rel=1e-6)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    d = 5
    mu1, mu2 = np.zeros(d), np.arange(d, dtype=float)
    var1, var2 = np.linspace(0.5, 2.0, d), np.linspace(3.0, 1.0, d)
    a = FeatureStats(mu1, np.diag(var1), 100)
    b = FeatureStats(mu2, np.diag(var2), 100)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_survives_dead_features():
    """A feature that is always 0 (a dead ReLU) makes the covariances singular."""
    features = _features(d=6)
    features[:, 2] = 0.0
    stats = FeatureStats.of(features)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-4)
    assert frechet_distance(stats, FeatureStats.of(features + np.eye(6)[0])) == pytest.approx(1.0, abs=1e-3)


def test_classifier_score_and_histogram_show_mode_collapse():
    classes = 10
    confident = np.full((100, classes), -20.0)
    confident[np.arange(100), np.arange(100) % classes] = 20.0
    assert classifier_score(confident) == pytest.approx(10.0, rel=1e-3)
    assert class_histogram(confident, classes).tolist() == [0.1] * classes
    collapsed = np.full((100, classes), -20.0)
    collapsed[:, 3] = 20.0
    assert classifier_score(collapsed) == pytest.approx(1.0, abs=1e-6)
    assert class_histogram(collapsed, classes)[3] == 1.0
    assert classifier_score(np.zeros((50, classes))) == pytest.approx(1.0)  # uninformative predictions


def test_feature_stats_rejects_bad_shapes():
    with pytest.raises(ValueError):
        FeatureStats.of(np.zeros(5))
    with pytest.raises(ValueError):
        FeatureStats.of(np.zeros((1, 3)))


def test_paired_interval_shrinks_as_one_over_sqrt_n():
    from ms_ddpm.bench.quality import paired_differences

    reference, features = FeatureStats.of(_features(n=20000, seed=1)), _features(n=4000, seed=2)

    def half_width(n):
        base = features[:n]
        moved = base.copy()
        moved[: n // 5] += 1.0
        diff = paired_differences([base, moved], reference, resamples=100)[1]
        return (diff.high - diff.low) / 2

    ratio = half_width(500) / half_width(4000)  # sqrt(8) = 2.8 in theory
    assert 2.0 < ratio < 4.0, ratio
