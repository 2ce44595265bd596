"""Fitting the op: the objective as solvers see it, one file per solver with a registry, the
full-batch and minibatch drivers with callbacks and checkpoints, ``fit`` and ``fit_many``."""

from .fit import FitResult as FitResult
from .fit import fit as fit
from .many import ManyResult as ManyResult
from .many import fit_many as fit_many
from .path import PathResult as PathResult
from .path import regularization_path as regularization_path
from .registry import SOLVERS as SOLVERS
from .registry import Solver as Solver

__all__ = ["FitResult", "ManyResult", "PathResult", "SOLVERS", "Solver", "fit", "fit_many", "regularization_path"]
