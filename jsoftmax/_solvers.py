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
import jax.flatten_util
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


def steihaug_cg(hvp: Callable, grad, radius, max_cg: int, inverse=None):
    """(s, r, iterations): s approximately minimises gᵀs + ½sᵀHs within ‖s‖_M ≤ radius; r is
    the residual −g − Hs, kept exact so that sᵀHs = −sᵀ(g + r) needs no further HVP.

    ``inverse``: M⁻¹ of a positive diagonal preconditioner M (the structure of ``grad``), or
    None (M = I). CG then runs on M^{-1/2} H M^{-1/2}: z = M⁻¹r, directions conjugate in H,
    the region in ‖s‖²_M = sᵀMs, and it stops when zᵀr ≤ ``CG_TOLERANCE``² z₀ᵀr₀ (liblinear's
    PCG, Hsia et al. 2018). M⁻¹ is kept rather than M because z = r·M⁻¹ is a product, which
    XLA recomputes inside each of z's two uses; a quotient r/M it stores, one more D×K array."""
    solve, m_dot = _metric(inverse)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, grad)
    r0 = jax.tree_util.tree_map(jnp.negative, grad)
    z0 = solve(r0)
    rz0 = tree_vdot(r0, z0)
    stop_at = (CG_TOLERANCE**2) * rz0

    def cond(carry):
        i, _, _, _, rz, done = carry
        return (i < max_cg) & ~done & (rz > stop_at)

    def body(carry):
        i, s, r, d, rz, _ = carry
        Hd = hvp(d)
        dHd = tree_vdot(d, Hd)
        alpha = rz / jnp.where(dHd > 0, dHd, 1)
        s_next = tree_axpy(alpha, d, s)
        leave = (dHd <= 0) | (jnp.sqrt(m_dot(s_next, s_next)) >= radius)
        # The step to the boundary: the τ ≥ 0 with ‖s + τd‖_M = radius.
        sd, dd, ss = m_dot(s, d), m_dot(d, d), m_dot(s, s)
        gap = radius**2 - ss
        tau = gap / (sd + jnp.sqrt(jnp.maximum(sd**2 + dd * gap, 0)))
        step = jnp.where(leave, tau, alpha)
        s = tree_axpy(step, d, s)
        r = tree_axpy(-step, Hd, r)
        z = solve(r)
        rz_new = tree_vdot(r, z)
        d = tree_axpy(rz_new / rz, d, z)
        return i + 1, s, r, d, rz_new, leave

    i, s, r, _, _, _ = lax.while_loop(cond, body, (jnp.asarray(0), zeros, r0, z0, rz0, jnp.asarray(False)))
    return s, r, i


def _metric(inverse):
    """(r ↦ M⁻¹r, (a, b) ↦ aᵀMb) for a diagonal M given as M⁻¹ (None: M = I)."""
    if inverse is None:
        return (lambda r: r), tree_vdot
    return (lambda r: jax.tree_util.tree_map(jnp.multiply, r, inverse),
            lambda a, b: tree_vdot(a, jax.tree_util.tree_map(jnp.divide, b, inverse)))


def newton_step(value_and_grad: Callable, make_hvp: Callable, params, state: NewtonState, value, grad,
                *, max_cg: int):
    """One outer iteration: (params, state, value, grad) after a CG solve and TRON's radius rule.
    ``make_hvp(params)`` returns (v ↦ H(params)·v, M⁻¹): the product may precompute what every
    call reuses; M⁻¹ is the inverse of a diagonal preconditioner M, or None. Step lengths are
    measured in ‖·‖_M,
    and the first region is ‖g‖_M (liblinear's TRON)."""
    hvp, inverse = make_hvp(params)
    _, m_dot = _metric(inverse)
    m_norm = lambda v: jnp.sqrt(m_dot(v, v))  # noqa: E731
    first = state.cg_iterations == 0
    radius = jnp.where(first, m_norm(grad).astype(state.radius.dtype), state.radius)
    s, r, cg_iters = steihaug_cg(hvp, grad, radius, max_cg, inverse)
    gs = tree_vdot(grad, s)
    predicted = -0.5 * (gs - tree_vdot(s, r))  # −(gᵀs + ½sᵀHs)
    trial = tree_axpy(1.0, s, params)
    new_value, new_grad = value_and_grad(trial)
    actual = value - new_value
    s_norm = m_norm(s)
    start_radius = radius
    radius = jnp.where(first, jnp.minimum(radius, s_norm), radius)  # first step
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
    radius = jnp.where(rounding & shrinks, jnp.maximum(start_radius, s_norm), radius)
    params = jax.tree_util.tree_map(lambda new, old: jnp.where(accept, new, old), trial, params)
    value = jnp.where(accept, new_value, value)
    grad = jax.tree_util.tree_map(lambda new, old: jnp.where(accept, new, old), new_grad, grad)
    # No predicted decrease (the gradient is at rounding level) or a vanishing region: stop.
    stalled = ~(predicted > 0) | ~(radius > 0)
    return params, NewtonState(radius, state.cg_iterations + cg_iters, stalled), value, grad


# --- A lean L-BFGS --------------------------------------------------------------------------
#
# optax.lbfgs is a GradientTransformation with a zoom line search (strong Wolfe conditions):
# general, but it spends about two evaluations of the value and gradient per iteration here
# and ~90 µs of bookkeeping per step on small problems. For this smooth, convex objective a
# backtracking (Armijo) line search that tries the quasi-Newton step first is accepted at t = 1
# almost always: one evaluation per iteration, as scipy's L-BFGS-B (scikit-learn's solver)
# manages. Curvature pairs with sᵀy ≤ 0 are skipped, which keeps the inverse-Hessian estimate
# positive definite without the Wolfe curvature condition.

LBFGS_MEMORY = 10
ARMIJO = 1e-4
MAX_BACKTRACKS = 30


class LbfgsState(NamedTuple):
    """History of the last ``LBFGS_MEMORY`` steps s and gradient changes y (flat vectors)."""

    s: jax.Array  # (m, n)
    y: jax.Array  # (m, n)
    rho: jax.Array  # (m,) 1 / sᵀy, 0 for empty slots
    newest: jax.Array  # index of the newest pair (ring buffer)
    stalled: jax.Array  # no acceptable step was found: further iterations cannot help


def lbfgs_init(grad, dtype) -> LbfgsState:
    flat, _ = jax.flatten_util.ravel_pytree(grad)
    m, n = LBFGS_MEMORY, flat.shape[0]
    zeros = jnp.zeros((m, n), flat.dtype)
    return LbfgsState(zeros, zeros, jnp.zeros((m,), flat.dtype), jnp.asarray(m - 1), jnp.asarray(False))


def _direction(state: LbfgsState, g: jax.Array) -> jax.Array:
    """−H·g by the two-loop recursion over the stored pairs (newest first, then oldest first)."""
    m = LBFGS_MEMORY
    order = (state.newest - jnp.arange(m)) % m  # newest → oldest

    def backward(i, carry):
        q, alphas = carry
        j = order[i]
        alpha = state.rho[j] * jnp.vdot(state.s[j], q)
        return q - alpha * state.y[j], alphas.at[j].set(alpha)

    q, alphas = lax.fori_loop(0, m, backward, (g, jnp.zeros((m,), g.dtype)))
    newest = state.newest
    yy = jnp.vdot(state.y[newest], state.y[newest])
    gamma = jnp.where(state.rho[newest] > 0, 1 / jnp.where(state.rho[newest] > 0, state.rho[newest] * yy, 1), 1.0)
    r = gamma * q

    def forward(i, r):
        j = order[m - 1 - i]
        beta = state.rho[j] * jnp.vdot(state.y[j], r)
        return r + state.s[j] * (alphas[j] - beta)

    return -lax.fori_loop(0, m, forward, r)


def lbfgs_step(value_and_grad: Callable, params, state: LbfgsState, value, grad):
    """One iteration: the quasi-Newton direction, a backtracking line search from t = 1 (from
    1/‖g‖ while there is no history), and the new pair."""
    x, unravel = jax.flatten_util.ravel_pytree(params)
    g, unravel_grad = jax.flatten_util.ravel_pytree(grad)
    empty = ~jnp.any(state.rho > 0)
    d = _direction(state, g)
    slope = jnp.vdot(g, d)
    descent = slope < 0
    d = jnp.where(descent, d, -g)  # a non-descent direction (rounding) falls back to −g
    slope = jnp.where(descent, slope, -jnp.vdot(g, g))
    t0 = jnp.where(empty | ~descent, jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.linalg.norm(g), 1e-30)), 1.0)
    tiny = 64 * jnp.finfo(value.dtype).eps * jnp.abs(value)

    def evaluate(t):
        v, gr = value_and_grad(unravel(x + t * d))
        return v, jax.flatten_util.ravel_pytree(gr)[0]

    def acceptable(t, v, gn):
        armijo = v <= value + ARMIJO * t * slope
        # At rounding level the value cannot show a decrease: take a step that shrinks |g|.
        rounding = jnp.abs(t * slope) <= tiny
        return jnp.isfinite(v) & jnp.where(rounding, jnp.vdot(gn, gn) < jnp.vdot(g, g), armijo)

    # k counts evaluations; k = 0 has none yet. The first pass evaluates at t0 and later passes
    # backtrack, so the objective is traced at one call site (half the compiled program).
    def cond(carry):
        k, t, v, gn = carry
        return (k == 0) | ((k <= MAX_BACKTRACKS) & ~acceptable(t, v, gn))

    def body(carry):
        k, t, v, gn = carry
        # Minimiser of the quadratic through f(0), f'(0) and f(t), kept within [0.1t, 0.5t].
        curvature = v - value - slope * t
        t_quad = jnp.where(jnp.isfinite(v) & (curvature > 0), -slope * t**2 / (2 * jnp.where(curvature > 0, curvature, 1)), 0.5 * t)
        t = jnp.where(k == 0, t0, jnp.clip(t_quad, 0.1 * t, 0.5 * t))
        v, gn = evaluate(t)
        return k + 1, t, v, gn

    start = (jnp.asarray(0), t0, jnp.asarray(jnp.inf, value.dtype), jnp.zeros_like(g))
    k, t, new_value, new_g = lax.while_loop(cond, body, start)
    ok = acceptable(t, new_value, new_g)
    s, y = t * d, new_g - g
    sy = jnp.vdot(s, y)
    keep = ok & (sy > jnp.finfo(sy.dtype).eps * jnp.vdot(y, y))
    slot = (state.newest + 1) % LBFGS_MEMORY
    state = LbfgsState(
        jnp.where(keep, state.s.at[slot].set(s), state.s),
        jnp.where(keep, state.y.at[slot].set(y), state.y),
        jnp.where(keep, state.rho.at[slot].set(1 / jnp.where(keep, sy, 1)), state.rho),
        jnp.where(keep, slot, state.newest),
        ~ok,
    )
    x_new = jnp.where(ok, x + s, x)
    value = jnp.where(ok, new_value, value)
    g = jnp.where(ok, new_g, g)
    return unravel(x_new), state, value, unravel_grad(g)
