r"""The L1 penalty's non-smooth part, written once (``docs/derivation.md`` §14).

For F(θ) = f(θ) + Σⱼ λⱼ|θⱼ| (λⱼ = λ₁ on W's entries, 0 on the intercept's) the subdifferential
of |θⱼ| is {sign θⱼ} away from 0 and [−1, 1] at 0. Its element of least magnitude, the
*pseudo-gradient* ◇F, is what a solver drives to 0 (``train/owlqn.py``) and what the
optimality check measures (``_verify``): max|◇F| is the KKT violation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pseudo_gradient(x: jax.Array, g: jax.Array, lam: jax.Array) -> jax.Array:
    r"""◇F at x from the smooth gradient g = ∇f(x) and the strengths λ (all the same shape):
    g + λ sign(x) where x ≠ 0; at x = 0, g + λ if that is negative, g − λ if that is positive,
    0 otherwise (|g| ≤ λ: 0 is in the subdifferential)."""
    at_zero = jnp.where(g + lam < 0, g + lam, jnp.where(g - lam > 0, g - lam, 0.0))
    return jnp.where(x > 0, g + lam, jnp.where(x < 0, g - lam, at_zero))


def l1_value(x: jax.Array, lam: jax.Array) -> jax.Array:
    """Σⱼ λⱼ|xⱼ|."""
    return jnp.sum(lam * jnp.abs(x))
