"""Any optax transformation as a full-batch solver, and the optimizer step minibatches share.

With an optimizer that carries a line search (``optax.lbfgs``), the loop passes it the objective
as ``value_fn`` and reuses the value and gradient the line search already computed
(``optax.value_and_grad_from_state``).
"""

from __future__ import annotations

from functools import partial

import jax
import optax

from .objective import Solver, first_carry, iterate, objective


def uses_linesearch(state) -> bool:
    """True for optimizers (like optax.lbfgs) whose state stores the value and gradient; decided
    from the state's structure, which is static, so it costs nothing under jit."""
    return optax.tree.get(state, "value", None) is not None


def update(optimizer, objective_fn, grad, state, params, value):
    """One optax step (the objective and value given to a line search that wants them)."""
    if uses_linesearch(state):
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=objective_fn)
    else:
        updates, state = optimizer.update(grad, state, params)
    return optax.apply_updates(params, updates), state


@partial(jax.jit, static_argnames=("optimizer", "spec", "plan", "max_iter"))
def start(params, data, *, optimizer, spec, plan, max_iter):
    return first_carry(params, data, spec, plan, max_iter, lambda p, g, v: optimizer.init(p))


@partial(jax.jit, static_argnames=("optimizer", "spec", "plan"))
def segment(carry, limit, tol, data, *, optimizer, spec, plan):
    """Optimizer steps until ``limit`` or max|grad| <= tol (a NaN gradient also ends the loop)."""
    objective_fn = objective(data, spec, plan)
    linesearch = uses_linesearch(carry.state)
    value_and_grad = (optax.value_and_grad_from_state(objective_fn) if linesearch
                      else jax.value_and_grad(objective_fn))

    def step(params, state, value, grad):
        params, state = update(optimizer, objective_fn, grad, state, params, value)
        value, grad = value_and_grad(params, state=state) if linesearch else value_and_grad(params)
        return params, state, value, grad

    return iterate(carry, limit, tol, step)


def solver_for(optimizer: optax.GradientTransformation) -> Solver:
    """The optax transformation as a :class:`Solver` (the optimizer is a static setting)."""
    return Solver("optax", start, segment, lambda params: ({"optimizer": optimizer}, {"optimizer": optimizer}))
