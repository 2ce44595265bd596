"""Seeded synthetic text-classification problems shaped like rcv1 and news20 (CSR, never dense).

Each document draws about ``per_row`` distinct terms: half from its class's own vocabulary,
half from a Zipf-distributed shared one, with tf–idf-like positive values and rows scaled to
unit L2 norm (as scikit-learn's ``TfidfVectorizer`` leaves them). Classes overlap through the
shared terms, so the problem is learnable but not separable.

    python -m benchmarks.sparse_data rcv1 /tmp/rcv1.svm     # also writes a LIBSVM file
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.sparse as sp

SHAPES = {  # name: (N, D, stored entries per row, K)
    "rcv1": (100_000, 50_000, 80, 50),
    "news20": (11_314, 130_000, 150, 20),
    "small": (2_000, 5_000, 30, 10),
}


def make(name: str, seed: int = 0, dtype=np.float64) -> tuple[sp.csr_matrix, np.ndarray]:
    """(X CSR (N, D), y (N,)) of the named shape."""
    n, d, per_row, k = SHAPES[name]
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    own = d // (2 * k)  # each class owns a block of the first half of the vocabulary
    shared_start = own * k
    ranks = np.arange(1, d - shared_start + 1)
    zipf = 1.0 / ranks
    zipf /= zipf.sum()
    counts = np.maximum(1, rng.poisson(per_row, n))
    half = counts // 2
    rows = np.repeat(np.arange(n), counts)
    total = int(counts.sum())
    cols = np.empty(total, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mine = np.arange(total) - np.repeat(starts, counts) < np.repeat(half, counts)
    cols[mine] = np.repeat(y, counts)[mine] * own + rng.integers(0, own, int(mine.sum()))
    cols[~mine] = shared_start + rng.choice(d - shared_start, int((~mine).sum()), p=zipf)
    values = rng.exponential(1.0, total) * np.log1p(cols % 97 + 1)
    X = sp.csr_matrix((values, (rows, cols)), shape=(n, d))  # duplicates summed
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ X
    X = X.tocsr().astype(dtype)
    X.sort_indices()
    return X, y


def main(argv: list[str]) -> int:
    from sklearn.datasets import dump_svmlight_file

    name, path = argv
    X, y = make(name)
    dump_svmlight_file(X, y, path, zero_based=False)
    print(f"{path}: {X.shape[0]} × {X.shape[1]}, {X.nnz} stored ({X.nnz / X.shape[0]:.0f} per row)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
