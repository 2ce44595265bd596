"""The default solvers, fit_many and the estimators on 8 forced host devices against one device;
run in a subprocess by tests/train/test_devices.py (the device count is fixed before jax
starts). Prints JSON: for each case, the largest difference relative to the largest entry and
the iteration counts; for each bad ``devices`` value, the error it raised."""

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import jsoftmax  # noqa: E402
from jsoftmax._compat import enable_x64  # noqa: E402


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def main():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((803, 12))  # 803 rows: not a multiple of 8 (the estimators pad)
    y = np.argmax(X @ rng.standard_normal((12, 5)) + rng.gumbel(size=(803, 5)), axis=1)
    X_sparse = sp.random(803, 40, density=0.1, random_state=0, format="csr")
    out = {"n_devices": len(jax.devices())}
    mesh = Mesh(np.array(jax.devices()), ("data",))
    with enable_x64():
        start = jsoftmax.Params(np.zeros((12, 5)), np.zeros(5))
        for solver in ("lbfgs", "newton-cg"):
            one = jsoftmax.fit(start, X[:800], y[:800], solver=solver, l2=0.01, tol=1e-12, max_iter=1000)
            many = jsoftmax.fit(start, X[:800], y[:800], solver=solver, l2=0.01, tol=1e-12, max_iter=1000,
                                mesh=mesh, data_axis="data")
            out[f"fit {solver}"] = [relative(many.params.W, one.params.W), one.n_iter, many.n_iter]
        # The L1 penalty's solver on the devices: the same optimum and the same exact zeros.
        one = jsoftmax.fit(start, X[:800], y[:800], l1=0.01, l2=0.001, tol=1e-12, max_iter=5000)
        many = jsoftmax.fit(start, X[:800], y[:800], l1=0.01, l2=0.001, tol=1e-12, max_iter=5000,
                            mesh=mesh, data_axis="data")
        out["fit owlqn"] = [relative(many.params.W, one.params.W), one.n_iter, many.n_iter,
                            bool(np.array_equal(np.asarray(one.params.W) == 0, np.asarray(many.params.W) == 0)),
                            int(np.sum(np.asarray(one.params.W) == 0))]
        sparse_start = jsoftmax.Params(np.zeros((40, 5)), np.zeros(5))
        one = jsoftmax.fit(sparse_start, X_sparse[:800], y[:800], solver="lbfgs", l2=0.01, tol=1e-10, max_iter=500)
        many = jsoftmax.fit(sparse_start, X_sparse[:800], y[:800], solver="lbfgs", l2=0.01, tol=1e-10, max_iter=500,
                            mesh=mesh, data_axis="data")
        out["fit lbfgs sparse"] = [relative(many.params.W, one.params.W), one.n_iter, many.n_iter]
        W = np.zeros((3, 12, 5))
        weights = np.ones((3, 800))
        weights[1, ::2] = 0
        kwargs = dict(sample_weights=weights, l2=np.array([0.1, 0.01, 0.001]), tol=1e-10)
        one = jsoftmax.fit_many(jsoftmax.Params(W, np.zeros((3, 5))), X[:800], y[:800], **kwargs)
        many = jsoftmax.fit_many(jsoftmax.Params(W, np.zeros((3, 5))), X[:800], y[:800], **kwargs, mesh=mesh,
                                 data_axis="data")
        out["fit_many"] = [relative(many.params.W, one.params.W), one.n_iter.tolist(), many.n_iter.tolist()]
    for solver in ("lbfgs", "newton-cg"):
        one = jsoftmax.SoftmaxRegression(solver=solver, tol=1e-12, max_iter=1000).fit(X, y)
        many = jsoftmax.SoftmaxRegression(solver=solver, tol=1e-12, max_iter=1000, devices="all").fit(X, y)
        out[f"estimator {solver}"] = [relative(many.coef_, one.coef_), int(one.n_iter_[0]), int(many.n_iter_[0])]
    one = jsoftmax.SoftmaxRegression(solver="lbfgs", tol=1e-10, max_iter=500).fit(X_sparse, y)
    many = jsoftmax.SoftmaxRegression(solver="lbfgs", tol=1e-10, max_iter=500, devices=4).fit(X_sparse, y)
    out["estimator lbfgs sparse"] = [relative(many.coef_, one.coef_), int(one.n_iter_[0]), int(many.n_iter_[0])]
    out["auto on devices, sparse"] = jsoftmax.SoftmaxRegression(devices=4, max_iter=5)._optimizer(
        803, 40, 5, True, Mesh(np.array(jax.devices()[:4]), ("data",)))
    one = jsoftmax.SoftmaxRegressionCV(Cs=[0.1, 1.0, 10.0], cv=3, tol=1e-12, max_iter=1000).fit(X, y)
    many = jsoftmax.SoftmaxRegressionCV(Cs=[0.1, 1.0, 10.0], cv=3, tol=1e-12, max_iter=1000, devices="all").fit(X, y)
    out["search"] = [relative(many.coef_, one.coef_), float(one.C_[0]), float(many.C_[0]),
                     float(np.abs(one.scores_[0] - many.scores_[0]).max())]
    bad = {"empty": [], "twice": [jax.devices()[0]] * 2, "too many": 9, "a word": "some", "not devices": ["cpu"]}
    out["bad"] = {}
    for name, value in bad.items():
        try:
            jsoftmax.SoftmaxRegression(devices=value, max_iter=2).fit(X, y)
            out["bad"][name] = "no error"
        except (TypeError, ValueError) as err:
            out["bad"][name] = f"{type(err).__name__}: {err}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
