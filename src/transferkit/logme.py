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
"""

from __future__ import annotations

import math

import numpy as np

_TINY = 1e-300  # only guards division by zero: a relative floor would break scale invariance


def logme(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME of ``features`` [n, D] for integer class ``labels`` [n]: mean evidence per example.

    Multiplying every feature by the same constant leaves it unchanged (α absorbs the scale);
    rescaling single dimensions does not, since the prior on ``w`` is isotropic.
    """
    f = np.asarray(features, dtype=np.float64)
    y_all = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y_all) or len(f) < 2:
        raise ValueError(f"need features [n, D] with n ≥ 2 matching labels [n]; got {f.shape} and {y_all.shape}")
    n, d = int(f.shape[0]), int(f.shape[1])
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    classes = np.unique(y_all)
    evidences = [_class_evidence(u, s, (y_all == k).astype(np.float64), d, max_iter, tol)[0] for k in classes]
    return float(np.mean(evidences)) / n


def _class_evidence(
    u: np.ndarray, s: np.ndarray, y: np.ndarray, d: int, max_iter: int, tol: float
) -> tuple[float, float, float]:
    """(evidence, α, β) for one target vector, by the MacKay fixed-point iteration."""
    n = len(y)
    sigma = s**2  # eigenvalues of FᵀF along the right singular vectors
    z = u.T @ y  # y in the left singular basis; the rest of y is orthogonal to F's columns
    outside = max(float(y @ y - z @ z), 0.0)
    # The paper starts at α = β = 1. Starting α at the mean squared feature value instead (1 for
    # standardised features, as in the paper) makes every iterate follow a global rescaling of F
    # exactly, so the result does not depend on the features' units even when the
    # fixed-point iteration is stopped early.
    alpha, beta = max(float(sigma.sum()) / (n * d), _TINY), 1.0
    for _ in range(max_iter):
        gamma, m2, res2 = _posterior_terms(alpha, beta, s, sigma, z, outside)
        new_alpha = gamma / max(m2, _TINY)
        new_beta = (n - gamma) / max(res2, _TINY)
        converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < tol
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    _, m2, res2 = _posterior_terms(alpha, beta, s, sigma, z, outside)
    # log|A| for A = αI + βFᵀF: the D − r directions F does not span contribute log α each.
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * math.log(alpha)
    evidence = (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * log_det
    )
    return evidence, alpha, beta


def _posterior_terms(
    alpha: float, beta: float, s: np.ndarray, sigma: np.ndarray, z: np.ndarray, outside: float
) -> tuple[float, float, float]:
    """γ (effective number of parameters), ‖m‖² and ‖Fm − y‖² of the posterior mean m."""
    shrink = beta * sigma / (alpha + beta * sigma)
    gamma = float(shrink.sum())
    m2 = float(np.sum((beta * s * z / (alpha + beta * sigma)) ** 2))
    res2 = float(np.sum(((1.0 - shrink) * z) ** 2)) + outside
    return gamma, m2, res2
