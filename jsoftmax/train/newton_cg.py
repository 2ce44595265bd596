r"""Trust-region Newton-CG on the analytic Hessian-vector product (``docs/derivation.md`` §8).

The method of liblinear's TRON (Lin, Weng & Keerthi 2008; Lin & Moré 1999), the family of
scikit-learn's ``newton-cg``: at each outer iteration, conjugate gradients solve
:math:`H s = -g` approximately inside a trust region :math:`\lVert s\rVert \le \Delta`
(Steihaug's truncation: stop at the boundary, or when :math:`\lVert r\rVert \le 0.1\lVert
g\rVert`); the step is taken when the actual reduction is at least :math:`10^{-4}` of the
quadratic model's, and :math:`\Delta` follows TRON's update rule. The whole solve — outer loop
and CG — is one compiled ``lax.while_loop`` nest; each CG iteration costs one HVP (three matrix
products by row chunks), each outer iteration one value-and-gradient.

Its state between outer iterations is :class:`NewtonState` (Δ, CG iterations so far, stalled),
inside the shared :class:`~jsoftmax.train.objective.Carry`, so callbacks and atomic checkpoints
work for it unchanged. When the N×K probabilities fit ``CURVATURE_BYTES`` they are kept for an
outer iteration's CG steps (two products per Hessian-vector product instead of three), and a
diagonal preconditioner is used where ``jsoftmax/_rules.json`` says it pays.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .. import _api
from .._types import Params, accumulation_dtype
from .objective import Affine, Solver, first_carry, in_dtype, iterate, objective, on_raw_features, tree_axpy, tree_vdot

# TRON's constants (liblinear tron.cpp).
ETA0, ETA1, ETA2 = 1e-4, 0.25, 0.75
SIGMA1, SIGMA2, SIGMA3 = 0.25, 0.5, 4.0
CG_TOLERANCE = 0.1  # relative residual at which CG stops
CURVATURE_BYTES = 256 * 2**20  # keep N×K probabilities across CG steps up to this size
# The diagonal preconditioner: where it runs and its mix α (see _rules.json and its source).
PRECONDITION = _api.rule("newton_preconditioner")


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


def step(value_and_grad: Callable, make_hvp: Callable, params, state: NewtonState, value, grad,
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


def max_cg(params: Params) -> int:
    """CG iterations per Newton step: enough to converge on small problems, bounded on large."""
    n_params = params.W.size + (0 if params.b is None else params.b.size)
    return int(min(max(n_params, 10), 250))


def _hvp_maker(data, spec, plan):
    """``make_hvp(params) -> (v ↦ H·v, M⁻¹ or None)`` for this problem (see the module doc)."""
    X = data.X

    def make_hvp(params):
        keep = X.shape[0] * params.W.shape[1] * jnp.dtype(accumulation_dtype(X.dtype)).itemsize <= CURVATURE_BYTES
        params = in_dtype(params, X.dtype)
        raw, transpose = jax.vjp(lambda q: on_raw_features(q, data.affine), params)
        inverse = None  # M⁻¹ of the preconditioner
        if keep:
            P, r = _api.curvature(raw, X, data.labels, data.sample_weight, data.smoothing, spec)
            loss_hvp = lambda V: _api.cached_hvp(P, r, X, V)  # noqa: E731
            if PRECONDITION[_api.layout_kind(X)]:
                inverse = _preconditioner(P, r, X, data.affine, data.l2, params)
        else:
            loss_hvp = lambda V: _api.objective_hvp(raw, V, X, data.labels, data.sample_weight, 0.0,  # noqa: E731
                                                    data.smoothing, spec, plan)

        def hvp(V):
            # H = Jᵀ H_raw J for the linear map J = on_raw_features (identity without affine);
            # the penalty contributes λV on the (standardised) weights.
            H = loss_hvp(on_raw_features(in_dtype(V, X.dtype), data.affine))
            (H,) = transpose(jax.tree_util.tree_map(lambda h, q: h.astype(q.dtype), H, raw))
            H = jax.tree_util.tree_map(lambda h, v: h.astype(v.dtype), H, V)
            return H._replace(W=H.W + data.l2 * V.W)

        return hvp, inverse

    return make_hvp


def _preconditioner(P, r, X, affine: Affine | None, l2, params: Params) -> Params:
    """M⁻¹ of Newton-CG's diagonal preconditioner M = (1 − α)·λ + α·diag(H) (liblinear's mix of the
    identity, here scaled by the penalty λ, and the Hessian's diagonal; α = ``PRECONDITION["mix"]``).
    The diagonal is the raw features' (``_api.hessian_diagonal``) scaled by σ⁻² for
    standardised W; centring's cross terms are left out: any positive M gives the same
    solution, only the number of CG steps depends on it. Without a penalty λ is replaced by
    the diagonal's mean."""
    dW, db = _api.hessian_diagonal(P, r, X)
    if affine is not None:
        dW = dW * jnp.square(affine.inv_scale.astype(dW.dtype))[:, None]
    base = jnp.where(l2 > 0, l2, (jnp.sum(dW) + jnp.sum(db)) / (dW.size + db.size)).astype(dW.dtype)
    base = jnp.where(base > 0, base, 1)
    mix = PRECONDITION["mix"]
    W = (1 / ((1 - mix) * base + mix * (dW + l2))).astype(params.W.dtype)
    b = None if params.b is None else (1 / ((1 - mix) * base + mix * db)).astype(params.b.dtype)
    # The barrier keeps XLA from rewriting a / M⁻¹ as a · M, which would keep M as well.
    return lax.optimization_barrier(Params(W, b))


@partial(jax.jit, static_argnames=("spec", "plan", "max_iter"))
def start(params, data, *, spec, plan, max_iter):
    return first_carry(params, data, spec, plan, max_iter, lambda p, g, v: init_state(g, v.dtype))


# The carry is donated: each segment's output replaces its input in place (one copy of the
# params, gradient and solver state instead of two; the drivers never reuse a carry).
@partial(jax.jit, static_argnames=("spec", "plan", "max_cg"), donate_argnums=0)
def segment(carry, limit, tol, data, *, spec, plan, max_cg):
    """Trust-region Newton-CG iterations until ``limit``, max|grad| <= tol, or the model
    predicts no further decrease; one compiled while_loop."""
    value_and_grad = jax.value_and_grad(objective(data, spec, plan))
    return iterate(carry, limit, tol, partial(step, value_and_grad, _hvp_maker(data, spec, plan), max_cg=max_cg))


SOLVER = Solver("newton-cg", start, segment, lambda params: ({}, {"max_cg": max_cg(params)}), sparse_mesh=False)
