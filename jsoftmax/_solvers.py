r"""Trust-region Newton-CG on the analytic Hessian-vector product (``docs/derivation.md`` §8).

The method of liblinear's TRON (Lin, Weng & Keerthi 2008; Lin & Moré 1999), the family of
scikit-learn's ``newton-cg``: at each outer iteration, conjugate gradients solve
:math:`H s = -g` approximately inside a trust region :math:`\lVert s\rVert \le \Delta`
(Steihaug's truncation: stop at the boundary, or when :math:`\lVert r\rVert \le 0.1\lVert
g\rVert`); the step is taken when the actual reduction is at least :math:`10^{-4}` of the
quadratic model's, and :math:`\Delta` follows TRON's update rule. The whole solve — outer loop
and CG — is one compiled ``lax.while_loop`` nest; each CG iteration costs one HVP (three matrix
products by row chunks), each outer iteration one value-and-gradient.

The carry has the layout of ``_train``'s full-batch loop — ``(iteration, params, state, value,
grad, losses)`` with ``state = (Δ, CG iterations so far, stalled)`` — so callbacks and atomic
checkpoints work for it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# TRON's constants (liblinear tron.cpp).
ETA0, ETA1, ETA2 = 1e-4, 0.25, 0.75
SIGMA1, SIGMA2, SIGMA3 = 0.25, 0.5, 4.0
CG_TOLERANCE = 0.1  # relative residual at which CG stops


def tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def tree_axpy(alpha, x, y):
    """alpha·x + y, leaf by leaf."""
    return jax.tree_util.tree_map(lambda u, v: alpha * u + v, x, y)


class NewtonState(NamedTuple):
    """The solver's own state between outer iterations."""

    radius: jax.Array  # Δ
    cg_iterations: jax.Array  # CG iterations so far (each one HVP)
    stalled: jax.Array  # the model predicts no decrease: further steps cannot help


def init_state(grad, dtype) -> NewtonState:
    return NewtonState(jnp.sqrt(tree_vdot(grad, grad)).astype(dtype), jnp.asarray(0),
                       jnp.asarray(False))


def steihaug_cg(hvp: Callable, grad, radius, max_cg: int):
    """(s, r, iterations): s approximately minimises gᵀs + ½sᵀHs within ‖s‖ ≤ radius; r is
    the residual −g − Hs, kept exact so that sᵀHs = −sᵀ(g + r) needs no further HVP."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, grad)
    r0 = jax.tree_util.tree_map(jnp.negative, grad)
    rr0 = tree_vdot(r0, r0)
    stop_at = (CG_TOLERANCE**2) * rr0

    def cond(carry):
        i, _, _, _, rr, done = carry
        return (i < max_cg) & ~done & (rr > stop_at)

    def body(carry):
        i, s, r, d, rr, _ = carry
        Hd = hvp(d)
        dHd = tree_vdot(d, Hd)
        alpha = rr / jnp.where(dHd > 0, dHd, 1)
        s_next = tree_axpy(alpha, d, s)
        leave = (dHd <= 0) | (jnp.sqrt(tree_vdot(s_next, s_next)) >= radius)
        # The step to the boundary: the τ ≥ 0 with ‖s + τd‖ = radius.
        sd, dd, ss = tree_vdot(s, d), tree_vdot(d, d), tree_vdot(s, s)
        gap = radius**2 - ss
        tau = gap / (sd + jnp.sqrt(jnp.maximum(sd**2 + dd * gap, 0)))
        step = jnp.where(leave, tau, alpha)
        s = tree_axpy(step, d, s)
        r = tree_axpy(-step, Hd, r)
        rr_new = tree_vdot(r, r)
        d = tree_axpy(rr_new / rr, d, r)
        return i + 1, s, r, d, rr_new, leave

    i, s, r, _, _, _ = lax.while_loop(cond, body, (jnp.asarray(0), zeros, r0, r0, rr0, jnp.asarray(False)))
    return s, r, i


def newton_step(value_and_grad: Callable, make_hvp: Callable, params, state: NewtonState, value, grad,
                max_cg: int):
    """One outer iteration: (params, state, value, grad) after a CG solve and TRON's radius rule.
    ``make_hvp(params)`` returns v ↦ H(params)·v (it may precompute what every product reuses)."""
    s, r, cg_iters = steihaug_cg(make_hvp(params), grad, state.radius, max_cg)
    gs = tree_vdot(grad, s)
    predicted = -0.5 * (gs - tree_vdot(s, r))  # −(gᵀs + ½sᵀHs)
    trial = tree_axpy(1.0, s, params)
    new_value, new_grad = value_and_grad(trial)
    actual = value - new_value
    s_norm = jnp.sqrt(tree_vdot(s, s))
    radius = state.radius
    radius = jnp.where(state.cg_iterations == 0, jnp.minimum(radius, s_norm), radius)  # first step
    curvature = new_value - value - gs
    alpha = jnp.where(curvature <= 0, SIGMA3, jnp.maximum(SIGMA1, -0.5 * gs / jnp.where(curvature <= 0, 1, curvature)))
    radius = jnp.where(
        actual < ETA0 * predicted, jnp.minimum(jnp.maximum(alpha, SIGMA1) * s_norm, SIGMA2 * radius),
        jnp.where(actual < ETA1 * predicted, jnp.maximum(SIGMA1 * radius, jnp.minimum(alpha * s_norm, SIGMA2 * radius)),
                  jnp.where(actual < ETA2 * predicted,
                            jnp.maximum(SIGMA1 * radius, jnp.minimum(alpha * s_norm, SIGMA3 * radius)),
                            jnp.maximum(radius, jnp.minimum(alpha * s_norm, SIGMA3 * radius)))))
    # Near the optimum the decrease falls below the rounding of the value itself, and ratios of
    # reductions are noise: there a step is taken when it shrinks the gradient (Newton's
    # quadratic convergence shows in the gradient long after the value stops changing).
    rounding = jnp.abs(predicted) <= 64 * jnp.finfo(value.dtype).eps * jnp.abs(value)
    shrinks = tree_vdot(new_grad, new_grad) < tree_vdot(grad, grad)
    accept = jnp.isfinite(new_value) & jnp.where(rounding, shrinks, actual > ETA0 * predicted)
    radius = jnp.where(rounding & shrinks, jnp.maximum(state.radius, s_norm), radius)
    params = jax.tree_util.tree_map(lambda new, old: jnp.where(accept, new, old), trial, params)
    value = jnp.where(accept, new_value, value)
    grad = jax.tree_util.tree_map(lambda new, old: jnp.where(accept, new, old), new_grad, grad)
    # No predicted decrease (the gradient is at rounding level) or a vanishing region: stop.
    stalled = ~(predicted > 0) | ~(radius > 0)
    return params, NewtonState(radius, state.cg_iterations + cg_iters, stalled), value, grad
