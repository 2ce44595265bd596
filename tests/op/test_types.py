"""Shape annotations are checked: the engine's under the test run's import hook, the public
API's by wrapping it here. An annotation that disagrees with the code fails these tests."""

import jax.numpy as jnp
import numpy as np
import pytest
from beartype import beartype
from jaxtyping import TypeCheckError, jaxtyped

import jsoftmax
from jsoftmax import _engine

from ..helpers import make_problem


def test_engine_annotations_are_checked_in_the_test_run():
    # pyproject's --jaxtyping-packages instruments the engine: inconsistent D is caught by the
    # annotations (Features "N D", Weights "D K") before any computation.
    with pytest.raises(TypeCheckError):
        _engine.scores(jnp.zeros((3, 4)), None, jnp.zeros((5, 2)))
    with pytest.raises(TypeCheckError):
        _engine.scores(jnp.zeros((3, 4)), jnp.zeros(5), jnp.zeros((5, 3)))  # b is (K,)
    assert _engine.scores(jnp.zeros((3, 4)), jnp.zeros(4), jnp.zeros((5, 3))).shape == (5, 4)


@pytest.mark.parametrize("name", ["risk", "value_and_grad", "risk_grad", "predict", "predict_proba"])
def test_public_annotations_describe_valid_calls(name):
    W, b, X, y = make_problem(12, 3, 4, seed=0, dtype=jnp.float32, bias=True)
    checked = jaxtyped(typechecker=beartype)(getattr(jsoftmax, name))
    labels = () if name.startswith("predict") else (y,)
    checked(W, X, *labels)  # valid: passes the annotations
    with pytest.raises(TypeCheckError):  # W's D disagrees with X's D
        checked(jnp.zeros((5, 4)), X, *labels)
    with pytest.raises(TypeCheckError):  # integer features are not Float
        checked(W, X.astype(jnp.int32), *labels)


def test_linear_cross_entropy_annotations():
    W, b, X, y = make_problem(12, 3, 4, seed=0, dtype=jnp.float32, bias=True)
    checked = jaxtyped(typechecker=beartype)(jsoftmax.linear_cross_entropy)
    np.testing.assert_allclose(checked(X, W, y, bias=b), jsoftmax.linear_cross_entropy(X, W, y, bias=b))
    with pytest.raises(TypeCheckError):  # the bias must have K entries
        checked(X, W, y, bias=jnp.zeros(3))
