r"""Sparse features: X kept in compressed rows, never densified (``docs/derivation.md`` §12).

The loss needs two products with X per pass: the scores :math:`Z = XW` and the weight gradient
:math:`X^\top dZ`. With X sparse both are sparse–dense products whose cost and memory grow with
the number of stored entries, and the engine's row chunks still bound the live scores to
``chunk_rows × K``. On the host, :func:`as_csr` turns any accepted input (``scipy.sparse`` of
any format, ``jax.experimental.sparse`` BCOO or BCSR) into canonical CSR — duplicates summed,
indices sorted, everything checked — and :func:`chunked_rows` lays it out for the engine:

* for each chunk of ``chunk_rows`` rows, its rows in CSR (a (rows, D) BCSR), padded to a fixed
  number of entries ``window`` (the largest chunk's), so every chunk has the same shapes;
* for each chunk, the same entries transposed, CSR of the (D, rows) matrix Xᵀ, so that
  Xᵀ·dZ of a chunk is again a CSR × dense product.

Both products then run on the sparse CSR kernels of the platform (a CPU custom call, cuSPARSE
or JAX's generic lowering). The transposed copy doubles the stored entries, which is the
price of never scattering into dW; both copies together are ≈ 2× the CSR bytes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._compat import is_tracer

SPARSE_DTYPES = (np.float32, np.float64)


class CSR(NamedTuple):
    """A validated, canonical CSR matrix on the host (sorted, no duplicates, finite shape)."""

    indptr: np.ndarray  # (N + 1,) int64
    indices: np.ndarray  # (nnz,) int32 column ids, sorted within each row
    data: np.ndarray  # (nnz,) float32 or float64
    shape: tuple[int, int]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)


def _jsparse():
    """``jax.experimental.sparse``, imported when sparse data first arrives (it adds ~0.15 s to
    ``import jsoftmax`` otherwise)."""
    from jax.experimental import sparse

    return sparse


def is_sparse(X: Any) -> bool:
    """A ``scipy.sparse`` matrix or array, or a JAX BCOO/BCSR (checked without importing either)."""
    if isinstance(X, (CSR, SparseRows)):
        return True
    return type(X).__module__.startswith(("scipy.sparse", "jax.experimental.sparse"))


def as_csr(X: Any, name: str = "X") -> CSR:
    """Canonical CSR of a sparse ``X``, with ``TypeError``/``ValueError`` naming ``name`` for a
    wrong dtype, batch dimensions, traced entries or indices out of range. The input is never
    modified (duplicates are summed in a copy)."""
    import scipy.sparse as sp

    if isinstance(X, CSR):
        return X
    jsparse = _jsparse()
    if isinstance(X, (jsparse.BCOO, jsparse.BCSR)):
        if any(is_tracer(a) for a in jax.tree_util.tree_leaves(X)):
            raise TypeError(f"a sparse `{name}` must be concrete (its layout is prepared on the host); "
                            "got traced entries. Pass it from outside jit, or close over it.")
        if X.n_batch or X.n_dense:
            raise ValueError(f"a sparse `{name}` must be a plain 2-D matrix; got a {type(X).__name__} with "
                             f"{X.n_batch} batch and {X.n_dense} dense dimensions.")
        if len(X.shape) != 2:
            raise ValueError(f"`{name}` must be 2-D (n_samples, n_features); got shape {X.shape}.")
        data = np.asarray(X.data)
        _check_dtype(data.dtype, name)
        if isinstance(X, jsparse.BCSR):
            indptr = np.asarray(X.indptr, np.int64)
            if indptr.shape != (X.shape[0] + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0) \
                    or indptr[-1] > data.shape[0]:
                raise ValueError(f"sparse `{name}`: its row pointers are not a valid CSR indptr.")
            rows = np.repeat(np.arange(X.shape[0]), np.diff(indptr))
            cols = np.asarray(X.indices, np.int64)[: indptr[-1]]
            data = data[: indptr[-1]]
        else:
            rows, cols = (np.asarray(X.indices[:, 0], np.int64), np.asarray(X.indices[:, 1], np.int64))
        outside = (rows < 0) | (rows >= X.shape[0]) | (cols < 0) | (cols >= X.shape[1])
        if np.any(outside & (data != 0)):
            at = int(np.argmax(outside & (data != 0)))
            raise ValueError(f"sparse `{name}` has an entry at index ({rows[at]}, {cols[at]}) outside its shape "
                             f"{tuple(X.shape)}.")
        keep = ~outside  # JAX marks padding entries with out-of-range indices (and value 0)
        X = sp.coo_matrix((data[keep], (rows[keep], cols[keep])), shape=X.shape)
    elif not sp.issparse(X):
        raise TypeError(f"`{name}` is not a sparse matrix; got {type(X).__name__}.")
    _check_dtype(X.dtype, name)
    if X.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (n_samples, n_features); got shape {X.shape}.")
    csr = sp.csr_matrix(X, copy=True)  # sum_duplicates and sort_indices below work in place
    try:
        csr.check_format(full_check=True)
    except ValueError as err:
        raise ValueError(f"sparse `{name}` is not a valid CSR matrix: {err}") from None
    csr.sum_duplicates()  # also sorts the indices; explicit zeros stay (they change nothing)
    if csr.shape[1] >= 2**31:
        raise ValueError(f"sparse `{name}` has {csr.shape[1]} columns; at most 2**31 - 1 are supported.")
    return CSR(csr.indptr.astype(np.int64), csr.indices.astype(np.int32), csr.data, csr.shape)


def _check_dtype(dtype, name: str) -> None:
    dtype = np.dtype(dtype)
    if dtype not in [np.dtype(d) for d in SPARSE_DTYPES]:
        raise TypeError(f"a sparse `{name}` must have dtype float32 or float64; got {dtype}.")


def max_chunk_entries(indptr: np.ndarray, rows: int) -> int:
    """The most stored entries in any chunk of ``rows`` consecutive rows (chunks start at 0)."""
    n = indptr.shape[0] - 1
    bounds = indptr[np.minimum(np.arange(0, n + rows, rows), n)]
    return int(np.max(np.diff(bounds), initial=0))


@jax.tree_util.register_pytree_node_class
class SparseRows:
    """Sparse X (N, D) laid out in chunks of ``chunk_rows`` rows for the engine (see module doc).

    Leaves, for C = ceil(N / chunk_rows) chunks of at most ``window`` entries each:
    ``data``, ``indices`` (C, window): the chunks' rows in CSR; ``indptr`` (C, chunk_rows + 1);
    ``t_data``, ``t_indices`` (C, window) and ``t_indptr`` (C, D + 1): the same entries as CSR of
    each chunk's transpose (None when only scores are needed, as for prediction).
    """

    def __init__(self, data, indices, indptr, t_data, t_indices, t_indptr, shape, chunk_rows, window):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.t_data, self.t_indices, self.t_indptr = t_data, t_indices, t_indptr
        self.shape, self.chunk_rows, self.window = tuple(shape), int(chunk_rows), int(window)

    def tree_flatten(self):
        return ((self.data, self.indices, self.indptr, self.t_data, self.t_indices, self.t_indptr),
                (self.shape, self.chunk_rows, self.window))

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(*leaves, *aux)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return 2

    def chunk(self, start, size: int) -> SparseChunk:
        """Rows ``[start, start + size)``; ``start`` a multiple of ``chunk_rows`` (may be traced)."""
        jsparse = _jsparse()
        index = start // self.chunk_rows
        take = lambda a: lax.dynamic_index_in_dim(a, index, keepdims=False)  # noqa: E731
        d = self.shape[1]
        rows = jsparse.BCSR((take(self.data), take(self.indices), take(self.indptr)[: size + 1]),
                            shape=(size, d))
        transposed = None
        if self.t_data is not None:
            transposed = jsparse.BCSR((take(self.t_data), take(self.t_indices), take(self.t_indptr)),
                                      shape=(d, size))
        return SparseChunk(rows, transposed)


class SparseChunk(NamedTuple):
    """One chunk of sparse rows: ``rows`` (size, D) and its transpose (D, size), both BCSR."""

    rows: Any  # jax.experimental.sparse.BCSR
    transposed: Any  # BCSR or None

    @property
    def dtype(self):
        return self.rows.data.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape


def chunked_rows(csr: CSR, chunk_rows: int, *, transposed: bool = True) -> SparseRows:
    """Lay ``csr`` out for the engine in chunks of ``chunk_rows`` rows (arrays on the device)."""
    n, d = csr.shape
    c = max(1, min(chunk_rows, n))
    n_chunks = -(-n // c)
    window = max(1, max_chunk_entries(csr.indptr, c))
    data = np.zeros((n_chunks, window), csr.dtype)
    indices = np.zeros((n_chunks, window), np.int32)
    indptr = np.zeros((n_chunks, c + 1), np.int32)
    t_data = np.zeros((n_chunks, window), csr.dtype) if transposed else None
    t_indices = np.zeros((n_chunks, window), np.int32) if transposed else None
    t_indptr = np.zeros((n_chunks, d + 1), np.int32) if transposed else None
    for i in range(n_chunks):
        lo, hi = i * c, min((i + 1) * c, n)
        first, last = int(csr.indptr[lo]), int(csr.indptr[hi])
        count = last - first
        local = csr.indptr[lo:hi + 1] - first
        indptr[i, : hi - lo + 1] = local
        indptr[i, hi - lo + 1:] = count  # rows past the end of the last chunk are empty
        data[i, :count] = csr.data[first:last]
        indices[i, :count] = csr.indices[first:last]
        if transposed:
            cols = csr.indices[first:last]
            order = np.argsort(cols, kind="stable")  # by column, rows ascending within one
            local_rows = np.repeat(np.arange(hi - lo, dtype=np.int32), np.diff(local))
            t_data[i, :count] = csr.data[first:last][order]
            t_indices[i, :count] = local_rows[order]
            t_indptr[i, 1:] = np.cumsum(np.bincount(cols, minlength=d))
    put = lambda a: None if a is None else jax.device_put(a)  # noqa: E731
    return SparseRows(put(data), put(indices), put(indptr), put(t_data), put(t_indices), put(t_indptr),
                      (n, d), c, window)


def scores(chunk: SparseChunk, W: jax.Array) -> jax.Array:
    """X_chunk · W, (size, K), a CSR × dense product."""
    return chunk.rows @ W


def transposed_product(chunk: SparseChunk, dz: jax.Array) -> jax.Array:
    """X_chunkᵀ · dz, (D, K), a CSR × dense product with the chunk's transposed copy."""
    return chunk.transposed @ dz.astype(chunk.dtype)


def stored_values(X: SparseRows) -> jax.Array:
    """Every stored value (padding included, which is 0): for the finiteness check."""
    return X.data


def column_moments(csr: CSR) -> tuple[np.ndarray, np.ndarray]:
    """(0, σ) per feature for scaling without centring (scikit-learn's
    ``StandardScaler(with_mean=False)``): σ² = mean(x²) − mean(x)², from the stored entries."""
    n, d = csr.shape
    sums = np.bincount(csr.indices, weights=csr.data.astype(np.float64), minlength=d)
    squares = np.bincount(csr.indices, weights=np.square(csr.data.astype(np.float64)), minlength=d)
    mean = sums / n
    variance = np.maximum(squares / n - mean**2, 0.0)
    return np.zeros(d), np.sqrt(variance)
