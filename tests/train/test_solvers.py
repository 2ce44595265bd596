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
from jsoftmax.sklearn.common import choose_solver

from ..helpers import CompileCounter, make_problem


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
    with pytest.raises(ValueError, match="unknown solver 'cg'; choose one of auto, lbfgs, newton-cg, owlqn, adam, sgd"):
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


def _two_loop(pairs, g):
    """−H·g by the textbook two-loop recursion (Nocedal & Wright, Alg. 7.4), in NumPy."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        alpha = (s @ q) / (s @ y)
        q -= alpha * y
        alphas.append(alpha)
    s, y = pairs[-1]
    r = (s @ y) / (y @ y) * q
    for (s, y), alpha in zip(pairs, reversed(alphas)):
        r += s * (alpha - (y @ r) / (s @ y))
    return -r


@pytest.mark.parametrize("n_pairs", [1, 4, 10, 13])  # below, at and past the ring buffer's wrap
def test_lbfgs_direction_is_the_textbook_two_loop_recursion(x64, n_pairs):
    from jsoftmax.train import lbfgs

    rng = np.random.default_rng(n_pairs)
    n = 40
    A = rng.normal(size=(n, n))
    A = A @ A.T / n + np.eye(n)  # y = A s + noise: sᵀy > 0, and SᵀY not symmetric (a curved f)
    state = lbfgs.init_state(jnp.zeros(n), jnp.float64)
    pairs = []
    for i in range(n_pairs):
        s = rng.normal(size=n)
        y = A @ s + 0.3 * rng.normal(size=n)
        assert s @ y > 0
        pairs.append((s, y))
        g = rng.normal(size=n)
        state = lbfgs.with_pair(state, jnp.asarray(s), jnp.asarray(y), jnp.asarray(True))
    kept = pairs[-lbfgs.MEMORY:]
    np.testing.assert_allclose(lbfgs._direction(state, jnp.asarray(g)), _two_loop(kept, g), rtol=1e-10, atol=1e-12)
    # a rejected step leaves the history as it was
    state = lbfgs.with_pair(state, jnp.asarray(rng.normal(size=n)), jnp.asarray(rng.normal(size=n)), jnp.asarray(False))
    np.testing.assert_allclose(lbfgs._direction(state, jnp.asarray(g)), _two_loop(kept, g), rtol=1e-10, atol=1e-12)


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


# --- the diagonal preconditioner (docs/derivation.md §13) -----------------------------------


def _sparse_problem(seed=0):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    X = sp.random(40, 6, density=0.4, format="lil", random_state=seed)
    X[:, 2] = 0  # an empty column: its diagonal is 0, the preconditioner must stay positive
    X = X.tocsr()
    y = rng.integers(0, 3, 40)
    y[::7] = -100
    return X, y, rng.uniform(0.5, 2.0, 40)


@pytest.mark.parametrize("sparse", [False, True])
def test_hessian_diagonal_equals_the_hvp_on_unit_directions(x64, sparse):
    from jsoftmax import _api, _engine

    X, y, weights = _sparse_problem()
    rng = np.random.default_rng(1)
    params = jsoftmax.Params(jnp.asarray(rng.standard_normal((6, 3))), jnp.asarray(rng.standard_normal(3)))
    data = X if sparse else X.toarray()
    problem, spec, _ = _api.prepare(params, data, y, sample_weight=weights, label_smoothing=0.1)
    P, r = _api.curvature(params, problem.X, problem.labels, problem.sample_weight, 0.1, spec)
    dW, db = _engine.hessian_diagonal(P, r, problem.X)
    want_W, want_b = np.zeros((6, 3)), np.zeros(3)
    for j, k in np.ndindex(6, 3):
        V = jsoftmax.Params(jnp.zeros((6, 3)).at[j, k].set(1.0), jnp.zeros(3))
        want_W[j, k] = jsoftmax.hvp(params, data, y, V, sample_weight=weights, label_smoothing=0.1).W[j, k]
    for k in range(3):
        V = jsoftmax.Params(jnp.zeros((6, 3)), jnp.zeros(3).at[k].set(1.0))
        want_b[k] = jsoftmax.hvp(params, data, y, V, sample_weight=weights, label_smoothing=0.1).b[k]
    np.testing.assert_allclose(dW, want_W, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(db, want_b, rtol=1e-12, atol=1e-15)
    assert np.all(np.asarray(dW)[2] == 0)  # the empty column


def _quadratic(n=8, seed=0, spread=1e4):
    """An SPD H with a wide diagonal (as text features give) and a gradient g."""
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((n, n)) * 0.1
    H = np.diag(np.logspace(0, np.log10(spread), n)) + Q @ Q.T
    return jnp.asarray(H), jnp.asarray(rng.standard_normal(n))


def test_preconditioned_cg_solves_the_same_system_in_fewer_steps(x64):
    from jsoftmax.train import newton_cg as _solvers

    H, g = _quadratic()
    hvp = lambda v: H @ v  # noqa: E731
    M = jnp.diag(H)
    plain = _solvers.steihaug_cg(hvp, g, jnp.inf, max_cg=100)
    pre = _solvers.steihaug_cg(hvp, g, jnp.inf, max_cg=100, inverse=1 / M)
    for s, r, _ in (plain, pre):
        np.testing.assert_allclose(r, -g - H @ s, atol=1e-10)  # the residual is kept exact
    # Each stops at its own criterion (rᵀr resp. zᵀr ≤ 0.01 of the start), both near the solution.
    s_pre, r_pre, steps_pre = pre
    assert float(r_pre @ (r_pre / M)) <= _solvers.CG_TOLERANCE**2 * float(g @ (g / M))
    assert int(steps_pre) < int(plain[2]), (int(steps_pre), int(plain[2]))
    # M = I is plain CG, step for step.
    same = _solvers.steihaug_cg(hvp, g, jnp.inf, max_cg=100, inverse=jnp.ones_like(g))
    np.testing.assert_allclose(same[0], plain[0], rtol=1e-13)
    assert int(same[2]) == int(plain[2])


def test_preconditioned_cg_stops_on_the_boundary_of_the_m_norm_region(x64):
    from jsoftmax.train import newton_cg as _solvers

    H, g = _quadratic(seed=3)
    M = jnp.diag(H)
    s, r, _ = _solvers.steihaug_cg(lambda v: H @ v, g, 0.05, max_cg=100, inverse=1 / M)
    np.testing.assert_allclose(float(jnp.sqrt(s @ (M * s))), 0.05, rtol=1e-10)
    assert float(g @ s + 0.5 * s @ (H @ s)) < 0  # a descent step of the model


@pytest.mark.parametrize("l2", [1e-2, 0.0])
def test_newton_cg_reaches_the_same_minimum_with_and_without_the_preconditioner(x64, monkeypatch, l2):
    import jax

    from jsoftmax.train import newton_cg as _train

    X, y, weights = _sparse_problem(seed=5)
    start = jsoftmax.Params(jnp.zeros((6, 3)), jnp.zeros(3))
    runs = {}
    for on in (True, False):
        monkeypatch.setitem(_train.PRECONDITION, "sparse", on)
        jax.clear_caches()  # the rule is read when the solver is traced
        runs[on] = jsoftmax.fit(start, X, y, sample_weight=weights, solver="newton-cg", l2=l2,
                                tol=1e-9, max_iter=200)
    for result in runs.values():
        assert result.stop_reason == "gtol" and np.all(np.isfinite(result.params.W)), result
    with_m, without = runs[True].params, runs[False].params
    if l2 > 0:
        np.testing.assert_allclose(with_m.W, without.W, atol=1e-7)
    # Softmax ignores a shift of all classes: the unpenalised bias (and, without a penalty,
    # each row of W) is a minimum only up to it. Compared centred over the classes.
    centre = lambda a: a - jnp.mean(a, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centre(with_m.W), centre(without.W), atol=1e-6)
    np.testing.assert_allclose(centre(with_m.b), centre(without.b), atol=1e-6)
