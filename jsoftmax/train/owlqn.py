r"""OWL-QN: L-BFGS for the L1 (and elastic-net) penalised risk, compiled whole (``docs/derivation.md`` §14).

The objective is :math:`F(\theta) = f(\theta) + \lambda_1\lVert W\rVert_1`, with f the smooth
risk (its L2 term included) and the intercept never penalised. F is not differentiable where a
weight is 0, so "the gradient is small" means nothing there; what takes the gradient's place
is the *pseudo-gradient* (Andrew & Gao, 2007), the element of the subdifferential of least
magnitude — the steepest descent direction's negative:

.. math::

    \diamond_j F = \begin{cases} \partial_j f + \lambda_1\,\mathrm{sign}(w_j) & w_j \neq 0 \\
    \partial_j f + \lambda_1 & w_j = 0,\ \partial_j f + \lambda_1 < 0 \\
    \partial_j f - \lambda_1 & w_j = 0,\ \partial_j f - \lambda_1 > 0 \\
    0 & \text{otherwise } (|\partial_j f| \le \lambda_1). \end{cases}

:math:`\max_j |\diamond_j F|` is the KKT violation: 0 exactly at the minimiser (for a zero
weight, how far :math:`|\partial_j f|` exceeds :math:`\lambda_1`; for a non-zero one,
:math:`|\partial_j f + \lambda_1 \mathrm{sign}(w_j)|`). The solver carries it as the loop's
"gradient", so the shared loop (``objective.iterate``) stops on it, and ``FitResult.grad_norm``
and the estimators' ``optimality_`` report it.

Each iteration: the L-BFGS direction of the pseudo-gradient (the two-loop recursion of
``lbfgs``, its pairs from the *smooth* gradients), with the penalised components that would not
descend set to 0 (the intercept's are kept: see ``step``); a backtracking line search along it, each trial point projected onto the orthant of
the current point (a weight that would change sign becomes exactly 0.0 — the model's zeros are
exact), accepted on the Armijo condition for F along the pseudo-gradient. One evaluation of f
per trial, as L-BFGS. With :math:`\lambda_1 = 0` it is L-BFGS.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp

from .._penalty import l1_value, pseudo_gradient
from . import lbfgs
from .objective import Carry, Solver, first_carry, iterate, objective

ARMIJO = 1e-4
MAX_BACKTRACKS = 40


class OwlqnState(NamedTuple):
    """The L-BFGS pairs (of smooth gradients) and the smooth gradient at the current point."""

    pairs: lbfgs.LbfgsState
    smooth_grad: jax.Array  # flat ∂f at the params
    stalled: jax.Array


def penalty_weights(params, l1) -> jax.Array:
    """λ₁ for every flat parameter of W, 0 for the intercept's (never penalised)."""
    mask = jax.tree_util.tree_map(jnp.ones_like, params)
    if getattr(params, "b", None) is not None:
        mask = mask._replace(b=jnp.zeros_like(params.b))
    flat, _ = jax.flatten_util.ravel_pytree(mask)
    return flat * l1


def start(params, data, *, spec, plan, max_iter) -> Carry:
    carry = first_carry(params, data, spec, plan, max_iter,
                        lambda p, g, v: OwlqnState(lbfgs.init_state(g, v.dtype),
                                                   jax.flatten_util.ravel_pytree(g)[0], jnp.asarray(False)))
    x, unravel = jax.flatten_util.ravel_pytree(params)
    lam = penalty_weights(params, data.l1).astype(x.dtype)
    value = carry.value + l1_value(x, lam).astype(carry.value.dtype)
    grad = unravel(pseudo_gradient(x, carry.state.smooth_grad, lam))
    return carry._replace(value=value, grad=grad, losses=carry.losses.at[0].set(value))


start = partial(jax.jit, static_argnames=("spec", "plan", "max_iter"))(start)


def step(value_and_grad, lam, params, state: OwlqnState, value, pg_tree):
    """One OWL-QN iteration (see the module doc): ``value`` is F, ``pg_tree`` its pseudo-gradient."""
    x, unravel = jax.flatten_util.ravel_pytree(params)
    pg = jax.flatten_util.ravel_pytree(pg_tree)[0]
    g = state.smooth_grad
    empty = ~jnp.any(state.pairs.rho > 0)
    d = lbfgs._direction(state.pairs, pg)
    # Only penalised components that descend along −pg. The intercept's are kept whole: the
    # two-loop direction's intercept part then sums to 0 over the classes (every gradient's
    # does), so Σₖ bₖ stays where it started — the softmax's shift that scikit-learn's fits
    # keep too (zeroing some of them drifted it: the same model, a different intercept_).
    d = jnp.where((lam == 0) | (d * pg < 0), d, 0.0)
    slope = jnp.vdot(pg, d)
    descent = slope < 0
    d = jnp.where(descent, d, -pg)
    slope = jnp.where(descent, slope, -jnp.vdot(pg, pg))
    orthant = jnp.where(x != 0, jnp.sign(x), -jnp.sign(pg))
    t0 = jnp.where(empty | ~descent, jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.linalg.norm(pg), 1e-30)), 1.0)
    tiny = 64 * jnp.finfo(value.dtype).eps * jnp.abs(value)

    def trial(t):
        moved = x + t * d
        # A penalised weight that would leave the orthant stops at 0 exactly.
        return jnp.where((lam > 0) & (jnp.sign(moved) != orthant), 0.0, moved)

    def evaluate(t):
        xt = trial(t)
        v, gr = value_and_grad(unravel(xt))
        return v + l1_value(xt, lam).astype(v.dtype), jax.flatten_util.ravel_pytree(gr)[0]

    def acceptable(t, v, gn):
        decrease = jnp.vdot(pg, trial(t) - x)
        armijo = v <= value + ARMIJO * decrease
        rounding = jnp.abs(decrease) <= tiny
        pg_new = pseudo_gradient(trial(t), gn, lam)
        return jnp.isfinite(v) & jnp.where(rounding, jnp.vdot(pg_new, pg_new) < jnp.vdot(pg, pg), armijo)

    t, new_value, new_g, ok = lbfgs.backtrack(t0, evaluate, acceptable, lambda t, v: 0.5 * t, value.dtype, g,
                                              MAX_BACKTRACKS)
    x_new = trial(t)
    pairs = lbfgs.with_pair(state.pairs, x_new - x, new_g - g, ok)
    x_new = jnp.where(ok, x_new, x)
    g = jnp.where(ok, new_g, g)
    value = jnp.where(ok, new_value, value)
    return unravel(x_new), OwlqnState(pairs, g, ~ok), value, unravel(pseudo_gradient(x_new, g, lam))


@partial(jax.jit, static_argnames=("spec", "plan"), donate_argnums=0)
def segment(carry, limit, tol, data, *, spec, plan):
    """Iterations until ``limit``, the KKT violation max|◇F| <= tol, or no step is found."""
    value_and_grad = jax.value_and_grad(objective(data, spec, plan))
    lam = penalty_weights(carry.params, data.l1).astype(carry.value.dtype)
    return iterate(carry, limit, tol, partial(step, value_and_grad, lam))


SOLVER = Solver("owlqn", start, segment, l1=True)
