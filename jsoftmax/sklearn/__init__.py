"""scikit-learn estimators over the op: :class:`SoftmaxRegression` and the C × fold search
:class:`SoftmaxRegressionCV`, sharing one fit preamble and declarative hyperparameter
constraints (``common``, ``constraints``), and reading ``jsoftmax.train``'s solver registry.
Needs scikit-learn (``pip install 'jsoftmax[sklearn]'``)."""

from .estimator import SoftmaxRegression as SoftmaxRegression
from .search import SoftmaxRegressionCV as SoftmaxRegressionCV

__all__ = ["SoftmaxRegression", "SoftmaxRegressionCV"]
