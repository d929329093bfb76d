"""LogME against a slow, direct computation of the same evidence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from transferkit.logme import _class_evidence, logme


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
    evidence, alpha, beta = _class_evidence(u, s, y, d, max_iter=200, tol=1e-10)
    assert evidence == pytest.approx(direct_evidence(f, y, alpha, beta), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("n", "d"), [(40, 8), (12, 30)])
def test_fixed_point_reaches_the_maximum_evidence(n: int, d: int) -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(n, d))
    y = (f @ rng.normal(size=d) > 0).astype(float)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    evidence, _, _ = _class_evidence(u, s, y, d, max_iter=500, tol=1e-12)
    assert evidence == pytest.approx(max_direct_evidence(f, y), abs=1e-5)


def test_logme_averages_per_example_evidence_over_classes() -> None:
    rng = np.random.default_rng(2)
    f, labels = rng.normal(size=(30, 5)), rng.integers(0, 3, size=30)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    per_class = [_class_evidence(u, s, (labels == k).astype(float), 5, 100, 1e-6)[0] for k in range(3)]
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
