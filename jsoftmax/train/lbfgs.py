"""A lean L-BFGS: one evaluation per iteration, compiled whole.

optax.lbfgs is a GradientTransformation with a zoom line search (strong Wolfe conditions):
general, but it spends about two evaluations of the value and gradient per iteration here and
more bookkeeping per step than the evaluation itself on small problems
(``benchmarks/results/fit-cpu.md``). For this smooth, convex objective a
backtracking (Armijo) line search that tries the quasi-Newton step first is accepted at t = 1
almost always: one evaluation per iteration, as scipy's L-BFGS-B (scikit-learn's solver)
manages. Curvature pairs with sᵀy ≤ 0 are skipped, which keeps the inverse-Hessian estimate
positive definite without the Wolfe curvature condition.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
from jax import lax

from .objective import Solver, first_carry, iterate, objective

MEMORY = 10
ARMIJO = 1e-4
MAX_BACKTRACKS = 30


class LbfgsState(NamedTuple):
    """History of the last ``MEMORY`` steps s and gradient changes y (flat vectors)."""

    s: jax.Array  # (m, n)
    y: jax.Array  # (m, n)
    rho: jax.Array  # (m,) 1 / sᵀy, 0 for empty slots
    newest: jax.Array  # index of the newest pair (ring buffer)
    stalled: jax.Array  # no acceptable step was found: further iterations cannot help


def init_state(grad, dtype) -> LbfgsState:
    flat, _ = jax.flatten_util.ravel_pytree(grad)
    m, n = MEMORY, flat.shape[0]
    zeros = jnp.zeros((m, n), flat.dtype)
    return LbfgsState(zeros, zeros, jnp.zeros((m,), flat.dtype), jnp.asarray(m - 1), jnp.asarray(False))


def _direction(state: LbfgsState, g: jax.Array) -> jax.Array:
    """−H·g by the two-loop recursion over the stored pairs (newest first, then oldest first)."""
    m = MEMORY
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


def with_pair(state: LbfgsState, s: jax.Array, y: jax.Array, ok: jax.Array) -> LbfgsState:
    """The history with the step s and gradient change y added (when the step was accepted and
    sᵀy > 0: the inverse-Hessian estimate stays positive definite), ``stalled`` when it was not."""
    sy = jnp.vdot(s, y)
    keep = ok & (sy > jnp.finfo(sy.dtype).eps * jnp.vdot(y, y))
    slot = (state.newest + 1) % MEMORY
    return LbfgsState(
        jnp.where(keep, state.s.at[slot].set(s), state.s),
        jnp.where(keep, state.y.at[slot].set(y), state.y),
        jnp.where(keep, state.rho.at[slot].set(1 / jnp.where(keep, sy, 1)), state.rho),
        jnp.where(keep, slot, state.newest),
        ~ok,
    )


def backtrack(t0, evaluate: Callable, acceptable: Callable, shorter: Callable, dtype, g, max_backtracks: int):
    """(t, value, gradient, accepted): ``evaluate(t) -> (value, flat gradient)`` at t0, then at
    ``shorter(t, value)`` until ``acceptable(t, value, gradient)`` or ``max_backtracks`` more
    evaluations. One ``while_loop`` whose first pass evaluates at t0 and later passes backtrack,
    so the objective is traced at one call site (half the compiled program)."""

    def cond(carry):  # k counts evaluations; k = 0 has none yet
        k, t, v, gn = carry
        return (k == 0) | ((k <= max_backtracks) & ~acceptable(t, v, gn))

    def body(carry):
        k, t, v, gn = carry
        t = jnp.where(k == 0, t0, shorter(t, v))
        v, gn = evaluate(t)
        return k + 1, t, v, gn

    start = (jnp.asarray(0), t0, jnp.asarray(jnp.inf, dtype), jnp.zeros_like(g))
    _, t, v, gn = lax.while_loop(cond, body, start)
    return t, v, gn, acceptable(t, v, gn)


def step(value_and_grad: Callable, params, state: LbfgsState, value, grad):
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

    def shorter(t, v):
        # Minimiser of the quadratic through f(0), f'(0) and f(t), kept within [0.1t, 0.5t].
        curvature = v - value - slope * t
        t_quad = jnp.where(jnp.isfinite(v) & (curvature > 0), -slope * t**2 / (2 * jnp.where(curvature > 0, curvature, 1)), 0.5 * t)
        return jnp.clip(t_quad, 0.1 * t, 0.5 * t)

    t, new_value, new_g, ok = backtrack(t0, evaluate, acceptable, shorter, value.dtype, g, MAX_BACKTRACKS)
    s = t * d
    state = with_pair(state, s, new_g - g, ok)
    x_new = jnp.where(ok, x + s, x)
    value = jnp.where(ok, new_value, value)
    g = jnp.where(ok, new_g, g)
    return unravel(x_new), state, value, unravel_grad(g)


@partial(jax.jit, static_argnames=("spec", "plan", "max_iter"))
def start(params, data, *, spec, plan, max_iter):
    return first_carry(params, data, spec, plan, max_iter, lambda p, g, v: init_state(g, v.dtype))


@partial(jax.jit, static_argnames=("spec", "plan"), donate_argnums=0)
def segment(carry, limit, tol, data, *, spec, plan):
    """Iterations until ``limit``, max|grad| <= tol, or no step is found (the carry is donated:
    each segment's output replaces its input in place)."""
    value_and_grad = jax.value_and_grad(objective(data, spec, plan))
    return iterate(carry, limit, tol, partial(step, value_and_grad))


SOLVER = Solver("lbfgs", start, segment)
