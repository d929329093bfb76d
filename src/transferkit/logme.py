"""LogME: how well frozen features will transfer, before any fine-tuning.

You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021. For each class k the 0/1 target ``y`` is modelled as ``y = F w + ε``
with prior ``w ~ N(0, α⁻¹ I)`` and noise ``ε ~ N(0, β⁻¹ I)``. LogME is the log marginal
likelihood (evidence) ``log p(y | F)`` at the α, β that maximise it, divided by the number
of examples and averaged over classes. Higher means the labels are more linearly predictable
from the features, with the Bayesian penalty for model size included.

Everything is computed from one SVD of ``F`` (the paper's Algorithm 2): in the basis of the
singular vectors the evidence and the fixed-point updates of α and β are sums over the
singular values, so each iteration costs O(min(n, D)) per class.

Numerical soundness (small data is where ranking is most wanted and where the textbook
iteration breaks):

- ``F`` is first divided by its root-mean-square entry. The maximised evidence does not
  change (α absorbs a global scale exactly), and afterwards fixed bounds on α mean the same
  thing for every backbone.
- Singular values below the usual rank tolerance count as zero, so exact duplicates,
  zero-variance or all-zero features and n < D give a clean rank-r basis, not noise.
- ``n − γ`` is summed from its positive parts instead of subtracted: when the features fit a
  class's labels exactly (n ≤ D, or tiny classes) γ rounds to n, and the subtraction gave
  β = 0 and a ZeroDivisionError.
- α and β stay inside fixed bounds. An exact fit sends β to infinity (no noise is needed);
  the bound ``BETA_MAX`` is a noise floor of 10⁻³ on the 0/1 labels, so such a class gets a
  large, finite evidence and :class:`Evidence` counts it in ``exact_fits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Bounds on the precisions. β is in units of the 0/1 labels: 10⁶ is a residual standard
# deviation of 0.001, which no real fit can be told apart from. α is in units of the
# RMS-normalised features: the bounds are far outside what an interior maximum uses.
ALPHA_MIN, ALPHA_MAX = 1e-10, 1e12
BETA_MIN, BETA_MAX = 1e-10, 1e6


@dataclass(frozen=True)
class Evidence:
    """LogME with what it took: ``value`` is the mean evidence per example over classes."""

    value: float
    classes: int
    exact_fits: int  # classes whose labels the features fit exactly: β at BETA_MAX, value bounded by it

    @property
    def note(self) -> str:
        if not self.exact_fits:
            return ""
        return (
            f"LogME: the features fit the labels of {self.exact_fits} of {self.classes} classes exactly "
            "(too few items for their dimensions, or duplicates); those classes count at the noise floor"
        )


def logme(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME of ``features`` [n, D] for integer class ``labels`` [n]: mean evidence per example.

    Multiplying every feature by the same constant leaves it unchanged (α absorbs the scale);
    rescaling single dimensions does not, since the prior on ``w`` is isotropic.
    """
    return logme_evidence(features, labels, max_iter=max_iter, tol=tol).value


def logme_evidence(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 100, tol: float = 1e-6) -> Evidence:
    """:func:`logme` with the count of classes that sit at the noise floor.

    Raises ``ValueError`` for inputs it cannot score (wrong shapes, NaN or infinite features);
    any n ≥ 1, D ≥ 1 and class sizes (one item included) are scored.
    """
    f = np.asarray(features, dtype=np.float64)
    y_all = np.asarray(labels)
    if f.ndim != 2 or y_all.ndim != 1 or len(f) != len(y_all) or len(f) < 1 or f.shape[1] < 1:
        raise ValueError(f"need features [n, D] with n, D ≥ 1 matching labels [n]; got {f.shape} and {y_all.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or infinite values")
    u, s = _basis(f)
    evidences, exact = [], 0
    for k in np.unique(y_all):
        evidence, _, beta = _class_evidence(u, s, (y_all == k).astype(np.float64), max_iter, tol)
        evidences.append(evidence)
        exact += beta >= BETA_MAX
    value = float(np.mean(evidences)) / len(f)
    if not math.isfinite(value):  # cannot happen inside the bounds; a NaN must never rank first
        raise ValueError("LogME is not finite for these features")
    return Evidence(value, len(evidences), exact)


def _basis(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of the RMS-normalised ``f``, numerical rank only."""
    rms = math.sqrt(float(np.mean(f * f)))
    if rms == 0.0:  # all-zero features explain nothing: an empty basis
        return np.zeros((len(f), 0)), np.zeros(0)
    u, s, _ = np.linalg.svd(f / rms, full_matrices=False)
    # numpy's matrix_rank tolerance: smaller singular values are rounding, and keeping them
    # would let duplicates or n < D fake directions that fit any label.
    keep = s > s[0] * max(f.shape) * np.finfo(np.float64).eps
    return u[:, keep], s[keep]


def _class_evidence(
    u: np.ndarray, s: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-6
) -> tuple[float, float, float]:
    """(evidence, α, β) for one target vector, by the MacKay fixed-point iteration.

    ``u`` [n, r] and ``s`` [r] are the thin SVD of the features, rank r (r may be 0).
    """
    n = len(y)
    sigma = s**2  # eigenvalues of FᵀF along the right singular vectors
    z = u.T @ y  # y in the left singular basis
    # the part of y no feature direction reaches, computed directly: ‖y‖² − ‖z‖² cancels to
    # rounding noise exactly when y is (nearly) in F's span, which is the case that matters
    outside = float(np.sum((y - u @ z) ** 2))
    # The paper starts at α = β = 1; the features are RMS-normalised, so α = 1 is the paper's
    # start for standardised features and every iterate follows a global rescaling of F.
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma, rest, m2, res2 = _posterior_terms(alpha, beta, s, sigma, z, outside, n)
        new_alpha = _clamp(gamma / m2 if m2 > 0 else ALPHA_MAX, ALPHA_MIN, ALPHA_MAX)
        new_beta = _clamp(rest / res2 if res2 > 0 else BETA_MAX, BETA_MIN, BETA_MAX)
        converged = abs(math.log(new_alpha / alpha)) < tol and abs(math.log(new_beta / beta)) < tol
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    _, _, m2, res2 = _posterior_terms(alpha, beta, s, sigma, z, outside, n)
    # log|A| − D log α for A = αI + βFᵀF is Σ log(1 + βσ/α) over the r directions F spans;
    # written so, no D·log α term cancels against another when D is in the thousands.
    evidence = (
        0.5 * n * math.log(beta)
        - 0.5 * float(np.sum(np.log1p(beta * sigma / alpha)))
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
    )
    return evidence, alpha, beta


def _posterior_terms(
    alpha: float, beta: float, s: np.ndarray, sigma: np.ndarray, z: np.ndarray, outside: float, n: int
) -> tuple[float, float, float, float]:
    """γ (effective number of parameters), n − γ, ‖m‖² and ‖Fm − y‖² of the posterior mean m."""
    keep = alpha / (alpha + beta * sigma)  # 1 − shrink, per direction, in (0, 1]
    gamma = float(np.sum(1.0 - keep))
    rest = (n - len(s)) + float(np.sum(keep))  # n − γ from positive parts: never rounds to 0
    m2 = float(np.sum((beta * s * z / (alpha + beta * sigma)) ** 2))
    res2 = float(np.sum((keep * z) ** 2)) + outside
    return gamma, rest, m2, res2


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high) if math.isfinite(value) else high
