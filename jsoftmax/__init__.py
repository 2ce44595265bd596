"""jsoftmax: softmax (multinomial logistic) regression in JAX with a verified analytic gradient."""

from importlib.metadata import PackageNotFoundError, version

from ._estimator import SoftmaxRegression as SoftmaxRegression
from ._linear_ce import linear_cross_entropy as linear_cross_entropy
from ._risk import Params as Params
from ._train import FitResult as FitResult
from ._train import fit as fit
from ._risk import predict as predict
from ._risk import predict_proba as predict_proba
from ._risk import risk as risk
from ._risk import risk_grad as risk_grad
from ._risk import value_and_grad as value_and_grad
from ._sharding import shard_arrays as shard_arrays
from ._verify import CheckRow as CheckRow
from ._verify import GradientReport as GradientReport
from ._verify import check_gradient as check_gradient

try:
    __version__ = version("jsoftmax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = [
    "CheckRow",
    "FitResult",
    "GradientReport",
    "Params",
    "SoftmaxRegression",
    "check_gradient",
    "fit",
    "linear_cross_entropy",
    "predict",
    "predict_proba",
    "risk",
    "risk_grad",
    "shard_arrays",
    "value_and_grad",
]
