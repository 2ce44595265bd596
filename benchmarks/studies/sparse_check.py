"""Sparse loss, gradient and HVP against a host reference (scipy + NumPy, float64) at text-scale
shapes: ``python -m benchmarks.studies.sparse_check [small news20 rcv1]``.

Prints the relative difference for each sparse format and chunk size, after one line on how the
platform's BCSR product treats entries outside its row pointers (an H200 read them:
``benchmarks/results/gpu/h200-run4/README.md``)."""

from __future__ import annotations

import json
import sys

import numpy as np


def reference(X, y, W, b, V):
    n = X.shape[0]
    S = X @ W + b
    S = S - S.max(axis=1, keepdims=True)
    P = np.exp(S)
    P /= P.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(P[np.arange(n), y]))
    D = P.copy()
    D[np.arange(n), y] -= 1.0
    gW, gb = X.T @ D / n, D.sum(axis=0) / n
    A = X @ V
    PA = P * A
    M = PA - P * PA.sum(axis=1, keepdims=True)
    return loss, gW, gb, X.T @ M / n


def window_semantics() -> dict:
    """Does the platform's BCSR product read only the entries its row pointers cover? A 2-row
    BCSR over 10 stored entries whose pointers cover entries 2..6 (jsoftmax's chunk windows
    looked like this before they were made whole): the largest error against those entries."""
    import jax
    import jax.experimental.sparse as jsparse
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    data, W = rng.normal(size=10), rng.normal(size=(4, 3))
    indices = np.array([0, 2, 1, 3, 0, 1, 2, 3, 1, 2], np.int32)
    pointers = np.array([2, 4, 7], np.int32)
    M = jsparse.BCSR((jnp.asarray(data), jnp.asarray(indices), jnp.asarray(pointers)), shape=(2, 4))
    dense = np.zeros((2, 4))
    for r in range(2):
        np.add.at(dense[r], indices[pointers[r]:pointers[r + 1]], data[pointers[r]:pointers[r + 1]])
    return {"check": "BCSR product with entries outside the row pointers",
            "max_error": float(np.abs(np.asarray(M @ W) - dense @ W).max()),
            "device": jax.devices()[0].platform}


def main(argv: list[str]) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.experimental.sparse as jsparse

    import jsoftmax

    from ..sparse_data import make

    print(json.dumps(window_semantics()), flush=True)
    for name in argv or ["small", "news20"]:
        X, y = make(name)
        k = int(y.max()) + 1
        rng = np.random.default_rng(1)
        W = rng.normal(size=(X.shape[1], k)) * 0.5
        b = rng.normal(size=k) * 0.1
        V = rng.normal(size=W.shape)
        loss, gW, gb, hW = reference(X, y, W, b, V)
        params = jsoftmax.Params(W, b)
        inputs = {"scipy": X, "bcsr": jsparse.BCSR.from_scipy_sparse(X), "bcoo": jsparse.BCOO.from_scipy_sparse(X)}
        for fmt, Xs in inputs.items():
            for chunk in (None, 1024):
                try:
                    value, grad = jsoftmax.value_and_grad(params, Xs, y, chunk_rows=chunk)
                    hv = jsoftmax.hvp(params, Xs, y, jsoftmax.Params(V, np.zeros(k)), chunk_rows=chunk)
                    rel = lambda a, r: float(np.linalg.norm(np.asarray(a) - r) / np.linalg.norm(r))
                    row = {"problem": name, "format": fmt, "chunk_rows": chunk,
                           "loss": abs(float(value) - loss) / abs(loss), "gW": rel(grad.W, gW),
                           "gb": rel(grad.b, gb), "hvW": rel(hv.W, hW),
                           "device": jax.devices()[0].platform}
                except Exception as err:  # noqa: BLE001 - a diagnostic: report and go on
                    row = {"problem": name, "format": fmt, "chunk_rows": chunk, "error": repr(err)[:400]}
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
