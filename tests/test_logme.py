"""LogME against a slow, direct computation of the same evidence, and on the small, duplicated,
imbalanced or perfectly separable data where the textbook iteration divides by zero."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from transferkit.logme import BETA_MAX, _basis, _class_evidence, logme, logme_evidence


def direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, β⁻¹I + α⁻¹FFᵀ): the marginal likelihood written out, no SVD, no algebra."""
    cov = np.eye(len(y)) / beta + f @ f.T / alpha
    return float(stats.multivariate_normal(mean=np.zeros(len(y)), cov=cov).logpdf(y))


def max_direct_evidence(f: np.ndarray, y: np.ndarray) -> float:
    """Maximise the direct evidence over (log α, log β) with a generic optimiser."""
    result = optimize.minimize(
        lambda p: -direct_evidence(f, y, np.exp(p[0]), np.exp(p[1])), x0=[0.0, 0.0], method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000},
    )  # fmt: skip
    return float(-result.fun)


@pytest.mark.parametrize(("n", "d"), [(40, 8), (12, 30)])  # more examples than features, and fewer
def test_evidence_matches_direct_computation_at_the_same_alpha_beta(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = (f[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(float)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    evidence, alpha, beta = _class_evidence(u, s, y, max_iter=200, tol=1e-10)
    assert evidence == pytest.approx(direct_evidence(f, y, alpha, beta), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("n", "d"), [(40, 8), (12, 30)])
def test_fixed_point_reaches_the_maximum_evidence(n: int, d: int) -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(n, d))
    y = (f @ rng.normal(size=d) > 0).astype(float)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    evidence, _, _ = _class_evidence(u, s, y, max_iter=500, tol=1e-12)
    assert evidence == pytest.approx(max_direct_evidence(f, y), abs=1e-5)


def test_logme_averages_per_example_evidence_over_classes() -> None:
    rng = np.random.default_rng(2)
    f, labels = rng.normal(size=(30, 5)), rng.integers(0, 3, size=30)
    u, s = _basis(f)
    per_class = [_class_evidence(u, s, (labels == k).astype(float))[0] for k in range(3)]
    assert logme(f, labels) == pytest.approx(np.mean(per_class) / 30)


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 1e4])
def test_logme_is_invariant_to_one_global_feature_scale(scale: float) -> None:
    rng = np.random.default_rng(3)
    f, labels = rng.normal(size=(60, 10)), rng.integers(0, 4, size=60)
    assert logme(scale * f, labels, tol=1e-10, max_iter=500) == pytest.approx(
        logme(f, labels, tol=1e-10, max_iter=500), abs=1e-6
    )


def test_logme_is_not_invariant_to_per_dimension_scaling() -> None:
    """The isotropic prior on w makes per-feature scale matter; the test documents that limit."""
    rng = np.random.default_rng(4)
    f = rng.normal(size=(60, 10))
    labels = f[:, :4].argmax(1)  # the informative dimensions are the ones shrunk below
    stretched = f * np.geomspace(1e-2, 1e2, 10)
    assert logme(stretched, labels) < logme(f, labels) - 0.01


def test_informative_features_score_higher_than_noise() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=200)
    informative = np.eye(3)[labels] * 3 + rng.normal(size=(200, 3))
    noise = rng.normal(size=(200, 3))
    assert logme(informative, labels) > logme(noise, labels) + 0.1


def test_bad_shapes_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="features"):
        logme(np.zeros((3,)), np.zeros(3))


# --------------------------------------------------------------------------- small and odd data


def _features(kind: str, labels: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    """Feature matrices of the shapes a frozen backbone gives on tiny data."""
    n, k = len(labels), int(labels.max()) + 1
    if kind == "gaussian":
        return rng.normal(size=(n, d))
    if kind == "relu-classes":  # ReLU features with a class signal: the shape that crashed `rank`
        signal = np.asarray(np.eye(k)[labels]) @ rng.normal(size=(k, d))
        return np.maximum(rng.normal(size=(n, d)) + 2 * signal, 0)
    if kind == "duplicates":  # every item of a class is the same image
        return np.asarray(rng.normal(size=(k, d))[labels])
    if kind == "separable":  # one-hot class indicators padded with zero-variance columns
        return np.hstack([np.asarray(np.eye(k)[labels]), np.ones((n, max(d - k, 0)))])
    if kind == "zero":
        return np.zeros((n, d))
    raise AssertionError(kind)


KINDS = ("gaussian", "relu-classes", "duplicates", "separable", "zero")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("per_class", "d"), [(2, 1280), (3, 64), (10, 1280), (10, 4)])  # n < d and n > d
def test_tiny_classes_score_finite_for_every_kind_of_features(kind: str, per_class: int, d: int) -> None:
    """Before: γ rounded to n, β to 0, and `rank` ended in a ZeroDivisionError (issue 42)."""
    rng = np.random.default_rng(per_class * d)
    labels = np.repeat(np.arange(3), per_class)
    result = logme_evidence(_features(kind, labels, d, rng), labels)
    assert np.isfinite(result.value) and result.classes == 3
    assert 0 <= result.exact_fits <= 3


def test_the_feature_shape_that_crashed_rank_now_scores() -> None:
    rng = np.random.default_rng(2)  # found by search: the old iteration divided by β = 0 here
    labels = np.repeat(np.arange(4), 4)
    f = _features("relu-classes", labels, 1280, rng)
    assert np.isfinite(logme(f, labels))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 10), min_size=1, max_size=5),
    d=st.sampled_from([1, 3, 16, 200]),
    kind=st.sampled_from(KINDS),
    copies=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_any_class_sizes_duplicates_and_dimensions_score_finite(
    sizes: list[int], d: int, kind: str, copies: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    f = _features(kind, labels, d, rng)
    f, labels = np.tile(f, (copies, 1)), np.tile(labels, copies)  # exact duplicate rows
    result = logme_evidence(f, labels)
    assert np.isfinite(result.value)
    assert logme(7.5 * f, labels) == pytest.approx(result.value, abs=1e-6)  # scale invariance holds here too


def test_imbalance_of_fifty_to_one_scores_and_keeps_its_order() -> None:
    rng = np.random.default_rng(6)
    labels = np.r_[np.zeros(100, int), np.ones(2, int)]
    informative = np.eye(2)[labels] * 3 + rng.normal(size=(102, 2))
    noise = rng.normal(size=(102, 2))
    assert logme(informative, labels) > logme(noise, labels)


def test_perfectly_separating_features_reach_the_noise_floor_and_score_highest() -> None:
    """Labels fit exactly have no maximum of the evidence in β: the noise floor bounds it, the
    count says so, and such features still outrank features that only predict the labels."""
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(3), 5)
    separable = logme_evidence(_features("separable", labels, 8, rng), labels)
    useful = logme_evidence(np.eye(3)[labels] + 0.5 * rng.normal(size=(15, 3)), labels)
    assert separable.exact_fits == 3 and "exactly" in separable.note
    assert useful.exact_fits == 0 and useful.note == ""
    assert np.isfinite(separable.value) and separable.value > useful.value


@pytest.mark.parametrize("kind", ["duplicates", "relu-classes"])
def test_rank_deficient_evidence_matches_direct_computation(kind: str) -> None:
    """With duplicates or n < d the rank cut-off drops only rounding: the evidence at the
    returned α, β is still the Gaussian marginal likelihood of the (RMS-normalised) features."""
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(3), 4)
    f = _features(kind, labels, 20, rng)
    f = f / np.sqrt(np.mean(f * f))
    u, s = _basis(f)
    y = (labels == 0).astype(float)
    evidence, alpha, beta = _class_evidence(u, s, y)
    assert beta <= BETA_MAX
    assert evidence == pytest.approx(direct_evidence(f, y, alpha, beta), rel=1e-6, abs=1e-6)


def test_one_item_classes_and_a_single_class_score() -> None:
    rng = np.random.default_rng(9)
    assert np.isfinite(logme(rng.normal(size=(4, 30)), np.array([0, 1, 2, 3])))
    assert np.isfinite(logme(rng.normal(size=(1, 5)), np.array([0])))
    assert np.isfinite(logme(rng.normal(size=(6, 5)), np.zeros(6, int)))


def test_non_finite_features_are_a_clear_error() -> None:
    f = np.ones((4, 3))
    f[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        logme(f, np.array([0, 0, 1, 1]))
