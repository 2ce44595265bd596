"""Built-in solvers: trust-region Newton-CG on the analytic HVP, and the solver choice."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import jsoftmax
from jsoftmax import SoftmaxRegression
from jsoftmax._estimator import choose_solver

from .helpers import CompileCounter, make_problem


def _sklearn_objective(model, X, y, C):
    """C Σ ℓ + ½‖coef‖² of a fitted scikit-learn-style model (scikit-learn's own objective)."""
    log_p = model.predict_log_proba(X)
    ids = np.searchsorted(model.classes_, y)
    return C * -log_p[np.arange(len(y)), ids].sum() + 0.5 * np.sum(model.coef_**2)


@pytest.mark.parametrize("name", ["iris", "wine", "digits", "breast_cancer"])
def test_newton_cg_reaches_scikit_learns_objective(name):
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    ours = SoftmaxRegression(solver="newton-cg", tol=1e-7, max_iter=200).fit(X, y)
    theirs = LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    assert ours.optimality_["converged"], ours.optimality_
    mine, reference = _sklearn_objective(ours, X, y, 1.0), _sklearn_objective(theirs, X, y, 1.0)
    assert mine <= reference * (1 + 1e-7)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-4)
    assert ours.n_iter_[0] <= 30  # Newton: a handful of outer iterations


def test_newton_cg_fit_matches_lbfgs_minimum(x64):
    W, b, X, y = make_problem(200, 6, 4, seed=2, bias=True)
    start = jsoftmax.Params(jnp.zeros_like(W), jnp.zeros_like(b))
    newton = jsoftmax.fit(start, X, y, solver="newton-cg", l2=1e-2, tol=1e-10, max_iter=100)
    lbfgs = jsoftmax.fit(start, X, y, optax.lbfgs(), l2=1e-2, tol=1e-10, max_iter=1000)
    assert newton.stop_reason == "gtol" and newton.grad_norm <= 1e-10
    np.testing.assert_allclose(newton.params.W, lbfgs.params.W, atol=1e-8)
    assert newton.n_iter < lbfgs.n_iter
    losses = newton.history["loss"]
    # Accepted steps decrease the value, except at rounding level, where a step is taken for
    # shrinking the gradient (64 ulps of the value, the solver's own threshold).
    assert all(b <= a + 64 * np.finfo(np.float64).eps * abs(a) for a, b in zip(losses, losses[1:]))


def test_newton_cg_float32_and_bare_weights(x32):
    W, _, X, y = make_problem(100, 5, 3, seed=1, dtype=jnp.float32)
    result = jsoftmax.fit(jnp.zeros_like(W), X, y, solver="newton-cg", l2=1e-2, tol=1e-5)
    assert result.converged and result.params.dtype == jnp.float32 and result.params.shape == W.shape


def test_newton_cg_checkpoint_resume_continues_the_same_run(x64, tmp_path):
    W, b, X, y = make_problem(120, 5, 3, seed=4, bias=True)
    start = jsoftmax.Params(jnp.zeros_like(W), jnp.zeros_like(b))
    straight = jsoftmax.fit(start, X, y, solver="newton-cg", l2=1e-3, tol=1e-12, max_iter=6)
    jsoftmax.fit(start, X, y, solver="newton-cg", l2=1e-3, tol=1e-12, max_iter=3,
                 checkpoint_dir=tmp_path, checkpoint_every=1)
    resumed = jsoftmax.fit(start, X, y, solver="newton-cg", l2=1e-3, tol=1e-12, max_iter=6,
                           checkpoint_dir=tmp_path, checkpoint_every=1, resume=True)
    np.testing.assert_array_equal(resumed.params.W, straight.params.W)
    assert resumed.history["loss"] == straight.history["loss"]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    (dict(solver="newton"), ValueError, "unknown solver 'newton'; choose one of 'lbfgs', 'newton-cg'"),
    (dict(solver="newton-cg", batch_size=8), ValueError, "solver='newton-cg' is full-batch"),
    (dict(solver="lbfgs", optimizer=optax.adam(0.1)), ValueError, "give either `optimizer`"),
    (dict(optimizer="adam"), TypeError, "`optimizer` must be an optax.GradientTransformation"),
])
def test_solver_arguments_are_checked(x32, kwargs, error, message):
    W, _, X, y = make_problem(16, 3, 3, dtype=jnp.float32)
    optimizer = kwargs.pop("optimizer", None)
    with pytest.raises(error, match=message):
        jsoftmax.fit(W, X, y, optimizer, **kwargs)


def test_estimator_solvers_and_auto():
    X, y = datasets.load_iris(return_X_y=True)
    assert choose_solver(150, 4, 3, None) == "lbfgs" and choose_solver(150, 4, 3, 32) == "adam"
    auto = SoftmaxRegression(max_iter=200).fit(X, y)  # the default is "auto"
    lbfgs = SoftmaxRegression(solver="lbfgs", max_iter=200).fit(X, y)
    np.testing.assert_array_equal(auto.coef_, lbfgs.coef_)
    with pytest.raises(ValueError, match="unknown solver 'cg'; choose one of auto, lbfgs, newton-cg, adam, sgd"):
        SoftmaxRegression(solver="cg").fit(X, y)
    with pytest.raises(ValueError, match="solver='newton-cg' is full-batch"):
        SoftmaxRegression(solver="newton-cg", batch_size=10).fit(X, y)


def test_lbfgs_by_name_compiles_once(x64):
    W, b, X, y = make_problem(40, 4, 3, seed=5, bias=True)
    start = jsoftmax.Params(jnp.zeros_like(W), jnp.zeros_like(b))
    jsoftmax.fit(start, X, y, solver="lbfgs", l2=0.1, max_iter=20)
    with CompileCounter() as counter:
        jsoftmax.fit(start, X, y, solver="lbfgs", l2=0.2, max_iter=20)
    assert counter.count == 0


@pytest.mark.parametrize("bias", [True, False])
def test_lean_lbfgs_reaches_optax_lbfgs_minimum(x64, bias):
    W, b, X, y = make_problem(250, 7, 5, seed=8, bias=True)
    start = jsoftmax.Params(jnp.zeros_like(W), jnp.zeros_like(b) if bias else None)
    lean = jsoftmax.fit(start, X, y, solver="lbfgs", l2=1e-3, tol=1e-9, max_iter=1000)
    reference = jsoftmax.fit(start, X, y, optax.lbfgs(), l2=1e-3, tol=1e-9, max_iter=1000)
    assert lean.stop_reason == "gtol" and lean.grad_norm <= 1e-9
    np.testing.assert_allclose(lean.params.W, reference.params.W, atol=1e-7)
    losses = lean.history["loss"]
    assert all(b <= a + 64 * np.finfo(np.float64).eps * abs(a) for a, b in zip(losses, losses[1:]))


def test_lean_lbfgs_float32_and_bfloat16(x32):
    W, b, X, y = make_problem(120, 4, 3, seed=9, dtype=jnp.float32, bias=True)
    start = jsoftmax.Params(jnp.zeros_like(W), jnp.zeros_like(b))
    result = jsoftmax.fit(start, X, y, solver="lbfgs", l2=1e-2, tol=1e-5)
    assert result.converged and result.params.W.dtype == jnp.float32
    half = jsoftmax.fit(jax_tree_cast(start, jnp.bfloat16), X.astype(jnp.bfloat16), y, solver="lbfgs", l2=1e-2,
                        tol=1e-2, max_iter=200)
    assert half.params.W.dtype == jnp.bfloat16 and half.stop_reason in ("gtol", "stalled")
    np.testing.assert_allclose(np.asarray(half.params.W, np.float32), result.params.W, atol=0.05)


def jax_tree_cast(params, dtype):
    return jsoftmax.Params(params.W.astype(dtype), None if params.b is None else params.b.astype(dtype))
