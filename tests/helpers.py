"""Shared test utilities: random problems, error measures and independent oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jsoftmax._verify import TOLERANCES, random_problem


def rtol(dtype) -> float:
    """Normwise relative tolerance for results computed in ``dtype`` (the library's table)."""
    return TOLERANCES[jnp.dtype(dtype).name]


def normwise_rel_error(actual, expected) -> float:
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


def assert_normwise_close(actual, expected, rtol, name=""):
    err = normwise_rel_error(actual, expected)
    assert err <= rtol, f"{name}: normwise relative error {err:.3e} > {rtol:.1e}"


def assert_same_passes(params, problem, reference, spec, plan, X) -> None:
    """Every pass over X — loss and gradient, H·V, the kept curvature's H·V and diagonal,
    predictions — gives on ``problem``'s layout of X what it gives on ``reference``'s (two
    results of ``_api.prepare`` with l2 = label smoothing = 0.1), to 1e-13 in float64."""
    import jsoftmax
    from jsoftmax import _api, _engine

    args = lambda p: (params, p.X, p.labels, p.sample_weight, 0.1, 0.1)  # noqa: E731
    got = _api._value_and_grad_jit(*args(problem), spec=spec, plan=plan)
    want = _api._value_and_grad_jit(*args(reference), spec=spec, plan=plan)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-13)
    assert_normwise_close(got[1].W, want[1].W, 1e-13, "W")
    V = jsoftmax.Params(params.W[::-1], params.b[::-1])
    hvp = lambda p: _api._hvp_jit(params.W, params.b, p.X, p.labels, p.sample_weight,  # noqa: E731
                                  V.W, V.b, 0.1, 0.1, spec=spec, plan=plan)
    assert_normwise_close(hvp(problem)[0], hvp(reference)[0], 1e-13, "HW")
    P, r = _api.curvature(params, problem.X, problem.labels, problem.sample_weight, 0.1, spec)
    P0, r0 = _api.curvature(params, reference.X, reference.labels, reference.sample_weight, 0.1, spec)
    np.testing.assert_allclose(P, P0, rtol=1e-13)
    assert_normwise_close(_api.cached_hvp(P, r, problem.X, V).W, _api.cached_hvp(P0, r0, reference.X, V).W, 1e-13)
    for got_d, want_d in zip(_engine.hessian_diagonal(P, r, problem.X), _engine.hessian_diagonal(P0, r0, reference.X)):
        assert_normwise_close(got_d, want_d, 1e-13, "diagonal")
    np.testing.assert_array_equal(jax.jit(_engine.all_predictions)(params.W, params.b, problem.X),
                                  jnp.argmax(X @ np.asarray(params.W) + np.asarray(params.b), axis=1))


def make_problem(n, d, k, *, seed=0, dtype=jnp.float64, bias=False, soft=False, ignore=False,
                 scale=1.0):
    """Random ``(W, b, X, labels)`` from the library's seeded generator."""
    params, X, labels, _ = random_problem(n, d, k, dtype=dtype, seed=seed, soft=soft, bias=bias,
                                          ignore=ignore, scale=scale)
    return params.W, params.b, X, labels


# --- Independent plain-jnp risks, one per extension (written from docs/derivation.md) -----


def plain_risk(W, X, y):
    """-(1/N) sum_n y_n^T log softmax(W^T x_n), y one-hot from integer ids."""
    Y = jax.nn.one_hot(y, W.shape[1], dtype=X.dtype)
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(X @ W), axis=1))


def bias_risk(W, b, X, y):
    Y = jax.nn.one_hot(y, W.shape[1], dtype=X.dtype)
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(X @ W + b), axis=1))


def soft_risk(W, X, Y):
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(X @ W), axis=1))


def weighted_risk(W, X, y, s):
    losses = -jnp.take_along_axis(jax.nn.log_softmax(X @ W), y[:, None], axis=1)[:, 0]
    return jnp.sum(s * losses) / jnp.sum(s)


def ignore_risk(W, X, y, ignore_index):
    keep = y != ignore_index
    losses = -jnp.take_along_axis(jax.nn.log_softmax(X @ W), jnp.where(keep, y, 0)[:, None], 1)[:, 0]
    return jnp.sum(jnp.where(keep, losses, 0)) / jnp.sum(keep)


def l2_risk(W, X, y, lam):
    return plain_risk(W, X, y) + 0.5 * lam * jnp.sum(W**2)


def smoothed_risk(W, X, y, eps):
    k = W.shape[1]
    T = (1 - eps) * jax.nn.one_hot(y, k, dtype=X.dtype) + eps / k
    return -jnp.mean(jnp.sum(T * jax.nn.log_softmax(X @ W), axis=1))


class CompileCounter:
    """Counts XLA compilations (jax.monitoring's backend-compile event) inside a ``with``."""

    def __init__(self):
        self.count = 0

    def _listen(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def sparse_rows(X: np.ndarray):
    """X with its small entries dropped, as scipy.sparse CSR (the 2-process run's sparse case)."""
    import scipy.sparse as sp

    return sp.csr_matrix(np.where(np.abs(X) > 0.8, X, 0.0))


def distributed_data() -> tuple[np.ndarray, np.ndarray]:
    """The 2-process run's rows (``workers/distributed_worker.py``), for the one-process fit
    it is compared with."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 5)).astype(np.float32)
    y = rng.integers(0, 4, 96).astype(np.int32)
    return X, y
