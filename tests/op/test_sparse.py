"""Sparse X end to end: every function equals its dense result, memory grows with the stored
entries, scikit-learn agrees on the same sparse input, and bad sparse input gets a clear error."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import jsoftmax
from jsoftmax import _api, _engine, _inplace, _sparse

from ..helpers import assert_normwise_close


def sparse_problem(n=90, d=30, k=6, *, density=0.15, seed=0, dtype=np.float64):
    """A scipy CSR with empty rows, empty columns, an explicit zero, and its labels/params."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="lil", random_state=seed, dtype=dtype)
    X[3, :] = 0  # an empty row
    X[:, 7] = 0  # an empty column
    X = X.tocsr()
    X.eliminate_zeros()
    X.data[0] = 0.0  # an explicit zero stays stored
    y = rng.integers(0, k, n)
    y[::9] = -100
    params = jsoftmax.Params(jnp.asarray(rng.standard_normal((d, k)), dtype),
                             jnp.asarray(rng.standard_normal(k), dtype))
    weights = jnp.asarray(rng.uniform(0.2, 2.0, n), dtype)
    return X, jnp.asarray(y, jnp.int32), params, weights


def formats(X):
    """The same matrix in every accepted format."""
    return {"csr": X, "csc": X.tocsc(), "coo": X.tocoo(), "csr_array": sp.csr_array(X),
            "bcoo": jsparse.BCOO.from_scipy_sparse(X), "bcsr": jsparse.BCSR.from_scipy_sparse(X)}


OPTIONS = [dict(), dict(l2=0.1, label_smoothing=0.1), dict(chunk_rows=16), dict(chunk_rows=32, l2=0.05)]


@pytest.mark.parametrize(("fmt", "options"), list(itertools.product(
    ["csr", "csc", "coo", "csr_array", "bcoo", "bcsr"], OPTIONS)))
def test_loss_gradient_and_hvp_equal_the_dense_ones(x64, fmt, options):
    X, y, params, weights = sparse_problem()
    Xs, Xd = formats(X)[fmt], jnp.asarray(X.toarray())
    got = jsoftmax.value_and_grad(params, Xs, y, sample_weight=weights, **options)
    want = jsoftmax.value_and_grad(params, Xd, y, sample_weight=weights, **options)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    assert_normwise_close(got[1].W, want[1].W, 1e-12, "W")
    assert_normwise_close(got[1].b, want[1].b, 1e-12, "b")
    np.testing.assert_allclose(jsoftmax.risk(params, Xs, y, sample_weight=weights, **options), want[0], rtol=1e-12)
    assert_normwise_close(jsoftmax.risk_grad(params, Xs, y, sample_weight=weights, **options).W, want[1].W, 1e-12)
    V = jsoftmax.Params(params.W[::-1], params.b[::-1])
    hvp_options = {key: value for key, value in options.items() if key != "l2"}
    got_h = jsoftmax.hvp(params, Xs, y, V, sample_weight=weights, **hvp_options)
    want_h = jsoftmax.hvp(params, Xd, y, V, sample_weight=weights, **hvp_options)
    assert_normwise_close(got_h.W, want_h.W, 1e-12, "HW")
    assert_normwise_close(got_h.b, want_h.b, 1e-12, "Hb")


def test_soft_labels_and_jax_grad_through_the_sparse_risk(x64):
    X, _, params, _ = sparse_problem(seed=1)
    rng = np.random.default_rng(1)
    probs = rng.random((X.shape[0], params.W.shape[1]))
    Y = jnp.asarray(probs / probs.sum(1, keepdims=True))
    f = lambda Xin: jax.grad(lambda p: jsoftmax.risk(p, Xin, Y, chunk_rows=16))(params)  # noqa: E731
    got, want = f(X), f(jnp.asarray(X.toarray()))
    assert_normwise_close(got.W, want.W, 1e-12)
    assert_normwise_close(got.b, want.b, 1e-12)


def test_predictions_equal_the_dense_ones(x64):
    X, _, params, _ = sparse_problem(seed=2)
    for Xs in formats(X).values():
        np.testing.assert_allclose(jsoftmax.predict_proba(params, Xs),
                                   jsoftmax.predict_proba(params, jnp.asarray(X.toarray())), rtol=1e-13)
        np.testing.assert_array_equal(jsoftmax.predict(params, Xs), jsoftmax.predict(params, jnp.asarray(X.toarray())))


def test_duplicates_are_summed_and_unsorted_indices_accepted(x64):
    X, y, params, _ = sparse_problem(seed=3)
    coo = X.tocoo()
    order = np.random.default_rng(0).permutation(coo.nnz)
    # Every entry split in two halves, in shuffled order: duplicates that must sum to X.
    rows = np.concatenate([coo.row, coo.row])[np.concatenate([order, order])]
    cols = np.concatenate([coo.col, coo.col])[np.concatenate([order, order])]
    vals = np.concatenate([coo.data / 2, coo.data / 2])[np.concatenate([order, order])]
    dup = sp.coo_matrix((vals, (rows, cols)), shape=X.shape)
    bcoo = jsparse.BCOO((jnp.asarray(vals), jnp.asarray(np.stack([rows, cols], 1))), shape=X.shape)
    want = jsoftmax.value_and_grad(params, X, y)
    for Xs in (dup, bcoo):
        got = jsoftmax.value_and_grad(params, Xs, y)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-13)
        assert_normwise_close(got[1].W, want[1].W, 1e-13)
    assert dup.nnz == 2 * coo.nnz  # the caller's matrix is not modified


def test_fit_on_sparse_equals_fit_on_dense(x64):
    X, y, params, weights = sparse_problem(n=150, seed=4)
    zero = jsoftmax.Params(jnp.zeros_like(params.W), jnp.zeros_like(params.b))
    for solver in ("lbfgs", "newton-cg"):
        a = jsoftmax.fit(zero, X, y, solver=solver, l2=1e-2, sample_weight=weights, tol=1e-10)
        b = jsoftmax.fit(zero, jnp.asarray(X.toarray()), y, solver=solver, l2=1e-2, sample_weight=weights,
                         tol=1e-10)
        assert a.converged and b.converged
        assert_normwise_close(a.params.W, b.params.W, 1e-8, solver)


def test_memory_grows_with_stored_entries_not_n_times_d():
    # 20,000 × 200,000 at 10 entries per row: dense it would be 16 GB (float32).
    n, d, k = 20_000, 200_000, 5
    rng = np.random.default_rng(0)
    X = sp.csr_matrix((rng.random(n * 10, np.float32), rng.integers(0, d, n * 10),
                       np.arange(0, n * 10 + 1, 10)), shape=(n, d))
    y = jnp.asarray(rng.integers(0, k, n), jnp.int32)
    params = jsoftmax.Params(jnp.zeros((d, k), jnp.float32), jnp.zeros(k, jnp.float32))
    problem, spec, plan = _api.prepare(params, X, y)
    layout = problem.X
    stored = sum(a.nbytes for a in jax.tree_util.tree_leaves(layout))
    assert stored < 8 * X.data.nbytes + 4 * n + 8 * d * layout.data.shape[0]  # two copies + row pointers
    compiled = jax.jit(jax.value_and_grad(lambda p: _api.objective(p, layout, y, None, 0.0, 0.0, spec, plan))
                       ).lower(params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 64 * 2**20, temp  # a chunk of scores and the weight gradient, never N×D
    value, grad = jsoftmax.value_and_grad(params, X, y)
    np.testing.assert_allclose(float(value), np.log(k), rtol=1e-6)


def test_chunk_rule_bounds_the_gathered_entries():
    from jsoftmax._engine import DEFAULT_CHUNK_BYTES, sparse_chunk_rows

    indptr = np.arange(0, 100_001 * 300, 300)[:100_001]  # 300 entries per row
    rows = sparse_chunk_rows(indptr, k=50, rows=16_384)
    assert _sparse.max_chunk_entries(indptr, rows) * 50 * 4 <= DEFAULT_CHUNK_BYTES
    assert rows >= 64 and rows & (rows - 1) == 0


# --- scikit-learn estimators on sparse input --------------------------------------------------



def _by_position(matrix) -> np.ndarray:
    """A BCSR read the way cuSPARSE reads it: every stored entry, in order, belongs to the row
    whose pointer range holds its position (an entry outside every range is an error)."""
    data, indices, pointers = (np.asarray(a) for a in (matrix.data, matrix.indices, matrix.indptr))
    assert pointers[0] == 0 and pointers[-1] == data.shape[0], (pointers[0], pointers[-1], data.shape[0])
    rows = np.searchsorted(pointers, np.arange(data.shape[0]), side="right") - 1
    dense = np.zeros(matrix.shape, data.dtype)
    np.add.at(dense, (rows, indices), data)
    return dense


@pytest.mark.parametrize("chunk_rows", [7, 16, 64])
def test_every_chunk_is_a_whole_csr_whatever_kernel_reads_it(x64, chunk_rows):
    # Regression (H200, benchmarks/results/gpu/h200-run4): chunk windows carried neighbouring
    # chunks' entries outside their row pointers; the CPU kernel skipped them, the GPU's did not.
    X, *_ = sparse_problem(n=90, d=30)
    layout = _sparse.chunked_rows(_sparse.as_csr(X), chunk_rows)
    dense = X.toarray()
    for start in range(0, 90, layout.chunk_rows):
        size = min(layout.chunk_rows, 90 - start)
        chunk = layout.chunk(start, size)
        np.testing.assert_array_equal(_by_position(chunk.rows), dense[start:start + size])
        np.testing.assert_array_equal(_by_position(chunk.transposed), dense[start:start + size].T)

def test_the_transpose_is_kept_as_an_order_of_four_bytes_per_entry(x64):
    X, *_ = sparse_problem(n=90, d=30)
    csr = _sparse.as_csr(X)
    layout = _sparse.chunked_rows(csr, 16)
    assert layout.t_order.dtype == jnp.int32 and layout.t_order.shape == (csr.nnz,)
    assert layout.t_indptr.shape == (6, 31)  # ⌈90 / 16⌉ chunks × (D + 1) column pointers
    # X's arrays once, 4 bytes per entry for the order, the pointers: no second copy of values.
    stored = sum(a.nbytes for a in jax.tree_util.tree_leaves(layout))
    assert stored == csr.data.nbytes + csr.indices.nbytes + 4 * 91 + 4 * csr.nnz + layout.t_indptr.nbytes
    # The short last chunk (90 = 5 × 16 + 10 rows) reads a window of its own entries.
    assert layout.last_window == csr.indptr[90] - csr.indptr[80] < layout.window
    with pytest.raises(ValueError, match="a chunk of 5 rows of a layout of 16-row chunks"):
        layout.chunk(0, 5)  # a window sized for neither would drop or misread entries


def test_probabilities_kept_chunk_by_chunk_equal_the_dense_softmax(x64):
    # Newton-CG's kept curvature and predict_proba take softmax per chunk (no N×K scores beside).
    X, y, params, _ = sparse_problem()
    layout = _sparse.chunked_rows(_sparse.as_csr(X), 16)  # 5 full chunks and a short one
    want = jax.nn.softmax(jnp.asarray(X.toarray()) @ params.W + params.b, axis=-1)
    np.testing.assert_allclose(jax.jit(_engine.all_probabilities)(params.W, params.b, layout), want,
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(jax.jit(_engine.all_scores)(params.W, params.b, layout),
                               jnp.asarray(X.toarray()) @ params.W + params.b, rtol=1e-13, atol=1e-13)


def _misaligned_csr(X, offset_bytes: int) -> _sparse.CSR:
    """``X`` as jsoftmax's checked CSR whose data and indices start ``offset_bytes`` past a
    64-byte boundary (scipy's constructors may copy what they are given)."""
    def placed(a):
        raw = _inplace.aligned_empty((a.shape[0] + 64 // a.itemsize,), a.dtype)
        view = raw[offset_bytes // a.itemsize:offset_bytes // a.itemsize + a.shape[0]]
        view[...] = a
        assert view.ctypes.data % 64 == offset_bytes
        return view

    csr = _sparse.as_csr(X)
    return csr._replace(data=placed(csr.data), indices=placed(csr.indices))


@pytest.mark.parametrize("offset_bytes", [0, 8, 16, 56])
@pytest.mark.parametrize("chunk_rows", [16, 64, 90])
def test_a_fit_reads_the_csr_where_it_lies(x64, monkeypatch, offset_bytes, chunk_rows):
    monkeypatch.setattr(_inplace, "MIN_BYTES", 0)  # small arrays take the in-place path too
    X = _misaligned_csr(sparse_problem(n=90, d=30)[0], offset_bytes)
    layout = _sparse.chunked_rows(X, chunk_rows, in_place=True)
    for device, host in ((layout.data, X.data), (layout.indices, X.indices)):  # no copy
        assert host.ctypes.data <= device.unsafe_buffer_pointer() < host.ctypes.data + host.nbytes
    assert layout.data_shift == (-offset_bytes % 64) // 8 and layout.indices_shift == (-offset_bytes % 64) // 4
    dense = sp.csr_matrix((X.data, X.indices, X.indptr), shape=X.shape).toarray()
    for start in range(0, 90, layout.chunk_rows):  # chunks that start inside the copied head too
        size = min(layout.chunk_rows, 90 - start)
        chunk = layout.chunk(start, size)
        np.testing.assert_array_equal(_by_position(chunk.rows), dense[start:start + size])
        np.testing.assert_array_equal(_by_position(chunk.transposed), dense[start:start + size].T)


@pytest.mark.parametrize("solver", ["newton-cg", "lbfgs"])
def test_fit_on_a_csr_read_in_place_equals_the_copied_one(x64, monkeypatch, solver):
    X, y, params, weights = sparse_problem(n=150, seed=4)
    zero = jsoftmax.Params(jnp.zeros_like(params.W), jnp.zeros_like(params.b))
    options = dict(solver=solver, l2=1e-2, sample_weight=weights, tol=1e-10)
    # Chunks of 32 rows: a first chunk inside the copied head, full ones, a short last one.
    monkeypatch.setattr(_engine, "sparse_chunk_rows", lambda *args, **kwargs: 32)
    copied = jsoftmax.fit(zero, X, y, **options)
    monkeypatch.setattr(_inplace, "MIN_BYTES", 0)
    X_in_place = _misaligned_csr(X, 24)
    problem, _, _ = _api.prepare(zero, X_in_place, y, in_place=True)
    assert problem.X.data_shift == 5 and problem.X.chunk_rows == 32  # (64 − 24) / 8: in place
    got = jsoftmax.fit(zero, X_in_place, y, **options)
    assert got.converged and got.n_iter == copied.n_iter
    np.testing.assert_allclose(got.params.W, copied.params.W, rtol=1e-12, atol=1e-14)


def test_estimator_matches_scikit_learn_on_the_same_sparse_input():
    from sklearn.datasets import fetch_20newsgroups_vectorized  # noqa: F401 - only the API name
    from sklearn.linear_model import LogisticRegression

    from benchmarks.sparse_data import make

    X, y = make("small")
    X, y = X[:800], y[:800]
    C = 10.0
    ours = jsoftmax.SoftmaxRegression(C=C, solver="newton-cg", tol=1e-8, dtype="float64").fit(X, y)
    theirs = LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(X, y)
    objective_ours, objective_theirs = ours.objective(X, y), theirs_objective(theirs, X, y, C)
    assert objective_ours <= objective_theirs * (1 + 1e-6)
    assert abs(objective_ours - objective_theirs) <= 1e-6 * objective_theirs
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-4)
    np.testing.assert_array_equal(ours.predict(X[:50]), ours.predict(X[:50].toarray()))


def theirs_objective(model, X, y, C):
    log_p = model.predict_log_proba(X)
    ids = np.searchsorted(model.classes_, y)
    return float(C * -log_p[np.arange(len(y)), ids].sum() + 0.5 * np.sum(model.coef_**2))


def test_estimator_standardize_on_sparse_scales_without_centring(x64):
    from sklearn.preprocessing import StandardScaler

    X, y, _, _ = sparse_problem(n=120, seed=5)
    y = np.asarray(y) % 3
    model = jsoftmax.SoftmaxRegression(standardize=True, solver="lbfgs", dtype="float64", tol=1e-9).fit(X, y)
    scaler = StandardScaler(with_mean=False).fit(X)
    np.testing.assert_array_equal(model.mean_, np.zeros(X.shape[1]))
    np.testing.assert_allclose(model.scale_, np.where(scaler.scale_ > 0, scaler.scale_, 1.0), rtol=1e-12)
    dense = jsoftmax.SoftmaxRegression(solver="lbfgs", dtype="float64", tol=1e-9).fit(scaler.transform(X).toarray(), y)
    np.testing.assert_allclose(model.predict_proba(X), dense.predict_proba(scaler.transform(X).toarray()), atol=1e-6)


def test_cv_estimator_on_sparse_input():
    from benchmarks.sparse_data import make

    X, y = make("small")
    X, y = X[:400], y[:400] % 3
    sparse_cv = jsoftmax.SoftmaxRegressionCV(Cs=3, cv=3, tol=1e-8, max_iter=1000, dtype="float64").fit(X, y)
    dense_cv = jsoftmax.SoftmaxRegressionCV(Cs=3, cv=3, tol=1e-8, max_iter=1000, dtype="float64").fit(X.toarray(), y)
    assert sparse_cv.C_[0] == dense_cv.C_[0]
    np.testing.assert_allclose(sparse_cv.scores_[0], dense_cv.scores_[0], atol=1e-12)
    # Both refits stop at tol 1e-8 on the same objective (the parity bounds: objective
    # within 1e-6, probabilities within 1e-4).
    best = sparse_cv.best_estimator_
    assert best.objective(X, y) == pytest.approx(dense_cv.best_estimator_.objective(X.toarray(), y), rel=1e-6)
    np.testing.assert_allclose(sparse_cv.predict_proba(X), dense_cv.predict_proba(X.toarray()), atol=1e-4)


def test_minibatch_on_sparse_is_refused_clearly(x64):
    X, y, _, _ = sparse_problem(seed=6)
    with pytest.raises(ValueError, match=r"`batch_size` \(minibatches\) is not supported for sparse X"):
        jsoftmax.SoftmaxRegression(solver="adam", batch_size=16).fit(X, np.asarray(y) % 3)


# --- bad sparse input --------------------------------------------------------------------------


def _bad_inputs(X):
    nan = X.copy()
    nan.data[2] = np.nan
    inf = X.copy()
    inf.data[-1] = -np.inf
    coo = X.tocoo()
    out_of_range = jsparse.BCOO((jnp.asarray(coo.data), jnp.asarray(np.stack([coo.row, coo.col], 1)).at[1, 1].set(99)),
                                shape=X.shape)
    batched = jsparse.BCOO.fromdense(jnp.ones((2, 3, 4)), n_batch=1)
    return [
        (nan, ValueError, r"sparse `X` stores 1 NaN or inf value\(s\) \(first: row \d+, column \d+, value nan\)"),
        (inf, ValueError, r"sparse `X` stores 1 NaN or inf value\(s\)"),
        (out_of_range, ValueError, r"sparse `X` has an entry at index \(\d+, 99\) outside its shape \(90, 30\)"),
        (batched, ValueError, r"a sparse `X` must be a plain 2-D matrix; got a BCOO with 1 batch"),
        (X.astype(np.int64), TypeError, r"a sparse `X` must have dtype float32 or float64; got int64"),
        (X.astype(np.complex128), TypeError, r"a sparse `X` must have dtype float32 or float64; got complex128"),
        (sp.csr_matrix((X.data, X.indices, X.indptr[:-1]), shape=(89, 30)), ValueError, r"labels"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_sparse_input_is_refused_naming_it(x64, case):
    X, y, params, _ = sparse_problem()
    bad, error, pattern = _bad_inputs(X)[case]
    with pytest.raises(error, match=pattern):
        jsoftmax.value_and_grad(params, bad, y)


def test_corrupt_scipy_indices_are_refused(x64):
    X, y, params, _ = sparse_problem()
    broken = X.copy()
    broken.indices[4] = 1000  # past n_features, bypassing scipy's constructor checks
    with pytest.raises(ValueError, match=r"sparse `X` is not a valid CSR matrix"):
        jsoftmax.risk(params, broken, y)


def test_traced_sparse_x_and_sparse_on_a_mesh_without_a_data_axis_or_with_class_blocks_are_refused():
    X, y, params, _ = sparse_problem(dtype=np.float32)
    params = jsoftmax.Params(params.W.astype(jnp.float32), params.b.astype(jnp.float32))
    bcoo = jsparse.BCOO.from_scipy_sparse(X)
    with pytest.raises(TypeError, match=r"a sparse `X` must be concrete"):
        jax.jit(lambda Xs: jsoftmax.risk(params, Xs, y))(bcoo)
    with pytest.raises(ValueError, match=r"`class_chunk_size` is not supported for a sparse X"):
        jsoftmax.linear_cross_entropy(X, params.W, y, class_chunk_size=2)
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    with pytest.raises(ValueError, match=r"a sparse X is sharded over its rows only: give `data_axis`"):
        jsoftmax.risk(params, X, y, mesh=mesh, data_axis="data", class_axis="model")


def test_gradient_with_respect_to_a_sparse_x_is_refused():
    X, y, params, _ = sparse_problem(dtype=np.float32)
    params = jsoftmax.Params(params.W.astype(jnp.float32), params.b.astype(jnp.float32))
    problem, spec, plan = _api.prepare(params, X, y)
    with pytest.raises(TypeError, match=r"differentiating with respect to a sparse `X` is not supported"):
        jax.grad(lambda R: _api.loss(params.W, params.b, R, problem.labels, None, 0.0, 0.0, spec, plan),
                 allow_int=True)(problem.X)


def test_wrong_number_of_features_names_the_shapes(x64):
    X, y, params, _ = sparse_problem()
    with pytest.raises(ValueError, match=r"`params.W` must have shape \(n_features, n_classes\) = \(29, K\)"):
        jsoftmax.risk(params, X[:, :29], y)


def test_sparse_validation_data_scores_as_its_dense_copy(x64):
    # validation_data goes through the same preparation as the training data (a sparse X is
    # laid out for its plan); it used to reach the engine as a host CSR and fail while tracing.
    import optax

    X, y, params, _ = sparse_problem()
    y = jnp.where(y < 0, 0, y)
    runs = [jsoftmax.fit(params, X.toarray(), y, optax.adam(1e-2), batch_size=16, max_epochs=3, seed=0,
                         validation_data=(val, y)) for val in (X, X.toarray())]
    np.testing.assert_allclose(runs[0].history["val_loss"], runs[1].history["val_loss"], rtol=1e-12)
    np.testing.assert_array_equal(runs[0].history["val_accuracy"], runs[1].history["val_accuracy"])
