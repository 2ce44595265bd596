"""jsoftmax: softmax (multinomial logistic) regression in JAX with a verified analytic gradient.

Importing the package changes no JAX setting and writes nothing. jsoftmax keeps the compiled
programs of its fits in a private per-user folder (``jsoftmax._aot``, ``jsoftmax._cache``:
``JSOFTMAX_CACHE_DIR`` moves it, ``JSOFTMAX_CACHE_DIR=off`` disables it), so that a new process
neither traces nor compiles them. Importing loads jax and optax only: ``SoftmaxRegression``
(which needs scikit-learn) is imported when it is first used, and the CLI imports matplotlib and
tqdm itself.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from ._api import hvp as hvp
from ._api import linear_cross_entropy as linear_cross_entropy
from ._api import predict as predict
from ._api import predict_proba as predict_proba
from ._api import risk as risk
from ._api import risk_grad as risk_grad
from ._api import value_and_grad as value_and_grad
from ._mesh import shard_arrays as shard_arrays
from ._sparse import ProcessRows as ProcessRows
from .train import FitResult as FitResult
from .train import ManyResult as ManyResult
from .train import fit as fit
from .train import fit_many as fit_many
from .train import PathResult as PathResult
from .train import regularization_path as regularization_path
from ._types import Params as Params
from ._verify import CheckRow as CheckRow
from ._verify import GradientReport as GradientReport
from ._verify import check_gradient as check_gradient

if TYPE_CHECKING:  # pragma: no cover - for type checkers; loaded lazily below at run time
    from .sklearn import SoftmaxRegression as SoftmaxRegression
    from .sklearn import SoftmaxRegressionCV as SoftmaxRegressionCV

try:
    __version__ = version("jsoftmax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    if name in ("SoftmaxRegression", "SoftmaxRegressionCV"):  # scikit-learn: only when asked for
        try:
            from .sklearn import SoftmaxRegression, SoftmaxRegressionCV
        except ImportError as err:
            if getattr(err, "name", "") and err.name.split(".")[0] in ("sklearn", "scipy"):
                raise ImportError(f"jsoftmax.{name} needs scikit-learn: pip install 'jsoftmax[sklearn]' "
                                  f"({err})") from err
            raise
        return {"SoftmaxRegression": SoftmaxRegression, "SoftmaxRegressionCV": SoftmaxRegressionCV}[name]
    raise AttributeError(f"module 'jsoftmax' has no attribute {name!r}")


__all__ = [
    "CheckRow",
    "FitResult",
    "GradientReport",
    "ManyResult",
    "Params",
    "PathResult",
    "ProcessRows",
    "SoftmaxRegression",
    "SoftmaxRegressionCV",
    "check_gradient",
    "fit",
    "fit_many",
    "hvp",
    "linear_cross_entropy",
    "predict",
    "predict_proba",
    "regularization_path",
    "risk",
    "risk_grad",
    "shard_arrays",
    "value_and_grad",
]
