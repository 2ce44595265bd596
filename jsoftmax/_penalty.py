r"""The L1 penalty's non-smooth part, written once (``docs/derivation.md`` §14).

For F(θ) = f(θ) + Σⱼ λⱼ|θⱼ| (λⱼ = λ₁ on W's entries, 0 on the intercept's) the subdifferential
of |θⱼ| is {sign θⱼ} away from 0 and [−1, 1] at 0. Its element of least magnitude, the
*pseudo-gradient* ◇F, is what a solver drives to 0 (``train/owlqn.py``) and what the
optimality check measures (``_verify``): max|◇F| is the KKT violation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pseudo_gradient(x: jax.Array, g: jax.Array, lam: jax.Array) -> jax.Array:
    r"""◇F at x from the smooth gradient g = ∇f(x) and the strengths λ (all the same shape):
    g + λ sign(x) where x ≠ 0; at x = 0, g + λ if that is negative, g − λ if that is positive,
    0 otherwise (|g| ≤ λ: 0 is in the subdifferential)."""
    at_zero = jnp.where(g + lam < 0, g + lam, jnp.where(g - lam > 0, g - lam, 0.0))
    return jnp.where(x > 0, g + lam, jnp.where(x < 0, g - lam, at_zero))


def l1_value(x: jax.Array, lam: jax.Array) -> jax.Array:
    """Σⱼ λⱼ|xⱼ|."""
    return jnp.sum(lam * jnp.abs(x))


def duality_gap(W, b, X, targets, weights, l1: float, l2: float, *, mean=None, scale=None) -> float:
    r"""P − D ≥ 0, a certificate of how far the point (W, b) is from the minimum of the elastic
    net P(W, b) = Σₙ wₙℓₙ + λ₁‖W‖₁ + λ/2‖W‖² (``docs/derivation.md`` §14), in float64 NumPy.

    ℓₙ = logsumexp(zₙ) − tₙᵀzₙ with zₙ = xₙW + b, tₙ a row of ``targets`` (N, K) on the simplex
    and w = ``weights``/Σ``weights``. X is dense or scipy.sparse; with ``mean``/``scale`` the
    problem is on the standardised features (x − mean)/scale, read without a standardised copy.
    The dual point is built from the probabilities P, as any feasible point gives D ≤ min P:

    - θₙ = wₙ(p′ₙ − tₙ) with p′ = (1 − s)P + s·v, the smallest s that makes Σₙθₙ = 0 (the
      unpenalised intercept's constraint; s = 0 without an intercept), v on the simplex;
    - scaled by α = min(1, λ₁/max|Xᵀθ|) when λ = 0, so that ‖Xᵀθ‖∞ ≤ λ₁ (α = 1 for λ > 0);
    - D = Σₙ wₙ H(αp′ₙ + (1 − α)tₙ) − g*(αXᵀθ), H the entropy and g* the conjugate of the
      penalty, Σⱼ (|vⱼ| − λ₁)₊²/(2λ) (0 for λ = 0).

    Two products with X (one each way), as one evaluation of the gradient.

    Example:
      >>> import numpy as np
      >>> X, t = np.eye(2), np.eye(2)
      >>> # W = 0 is optimal for λ₁ ≥ max|∂f/∂W| = 1/4: the gap is 0 there, positive at W ≠ 0
      >>> round(duality_gap(np.zeros((2, 2)), np.zeros(2), X, t, np.ones(2), l1=0.3, l2=0.0), 12)
      0.0
      >>> duality_gap(np.full((2, 2), 0.1), np.zeros(2), X, t, np.ones(2), l1=0.3, l2=0.0) > 0
      True
    """
    from scipy.special import entr

    W = np.asarray(W, np.float64)
    k = W.shape[1]
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    T = np.asarray(targets, np.float64)
    inv_scale = None if scale is None else 1.0 / np.asarray(scale, np.float64)
    W_raw = W if inv_scale is None else W * inv_scale[:, None]
    b_raw = (np.zeros(k) if b is None else np.asarray(b, np.float64)) - (0.0 if mean is None else np.asarray(mean) @ W_raw)
    Z = np.asarray(X @ W_raw) + b_raw
    top = Z.max(axis=1, keepdims=True)
    log_sum = top + np.log(np.exp(Z - top).sum(axis=1, keepdims=True))
    P = np.exp(Z - log_sum)
    primal = float(w @ (log_sum[:, 0] - np.sum(T * Z, axis=1)) + l1 * np.abs(W).sum() + 0.5 * l2 * np.sum(W * W))

    def transposed(M):  # X_stdᵀM: (x − mean)/scale without the standardised copy
        out = np.asarray(X.T @ M, np.float64)
        if mean is not None:
            out = out - np.outer(mean, M.sum(axis=0))
        return out if inv_scale is None else out * inv_scale[:, None]

    products = transposed(np.hstack([w[:, None] * (P - T), w[:, None] * T, w[:, None]]))
    G, XwT, xw = products[:, :k], products[:, k:2 * k], products[:, 2 * k]
    if b is not None:  # Σₙ wₙ(p′ₙ − tₙ) = 0: p̄′ = t̄, by moving the mean p̄ toward t̄ through v
        p_mean, t_mean = w @ P, w @ T
        excess = p_mean - t_mean  # ∇_b f, summing to 0 over the classes
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = float(np.max(np.where(p_mean > 0, excess / p_mean, 0.0), initial=0.0))
        # v = p̄ − excess/s ≥ 0 sums to 1; at a rounding-level s (∇_b f ≈ 0 already) the
        # quotient is noise and the constraint holds to rounding without the mix.
        v = np.maximum(p_mean - excess / shift, 0.0) if shift > 64 * np.finfo(np.float64).eps else None
        if v is not None and v.sum() > 0:
            v = v / v.sum()
            P = (1.0 - shift) * P + shift * v
            G = (1.0 - shift) * G + shift * (np.outer(xw, v) - XwT)
    if l2 > 0:
        alpha = 1.0
        conjugate = float(np.sum(np.maximum(np.abs(G) - l1, 0.0) ** 2) / (2 * l2))
    else:
        peak = float(np.max(np.abs(G), initial=0.0))
        alpha = 1.0 if peak <= l1 else l1 / peak
        conjugate = 0.0
    dual = float(w @ entr(alpha * P + (1.0 - alpha) * T).sum(axis=1)) - conjugate
    return primal - dual
