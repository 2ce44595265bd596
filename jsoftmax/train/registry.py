"""The solvers by name: a new full-batch solver is one file with a ``SOLVER`` record
(:class:`~jsoftmax.train.objective.Solver`) and one line here. ``fit``, ``fit_many``, the
estimators and the command line read this mapping; no other place spells a solver's name."""

from __future__ import annotations

import optax

from . import lbfgs, newton_cg, optax_solver, owlqn
from .objective import Solver

# Each solver's name is spelled once, in its own file (its SOLVER record).
SOLVERS: dict[str, Solver] = {solver.name: solver for solver in (
    lbfgs.SOLVER,
    newton_cg.SOLVER,
    owlqn.SOLVER,
)}
DEFAULT = lbfgs.SOLVER.name


def get(name: str) -> Solver:
    """The solver called ``name``; a ``ValueError`` listing the names otherwise."""
    if not isinstance(name, str) or name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(map(repr, SOLVERS))} "
                         "or pass an optax transformation as `optimizer`.")
    return SOLVERS[name]


def with_l1() -> list[str]:
    """The solvers that minimise an L1 penalty."""
    return [name for name, solver in SOLVERS.items() if solver.l1]


def for_optimizer(optimizer: optax.GradientTransformation) -> Solver:
    """An optax transformation run full batch as a solver."""
    return optax_solver.solver_for(optimizer)
