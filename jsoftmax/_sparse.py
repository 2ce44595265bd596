r"""Sparse features: X kept in compressed rows, never densified (``docs/derivation.md`` §12).

The loss needs two products with X per pass: the scores :math:`Z = XW` and the weight gradient
:math:`X^\top dZ`. With X sparse both are sparse–dense products whose cost and memory grow with
the number of stored entries, and the engine's row chunks still bound the live scores to
``chunk_rows × K``. On the host, :func:`as_csr` turns any accepted input (``scipy.sparse`` of
any format, ``jax.experimental.sparse`` BCOO or BCSR) into canonical CSR — duplicates summed,
indices sorted, everything checked — and :func:`chunked_rows` lays it out for the engine:

* X's own CSR arrays, from which each chunk of ``chunk_rows`` rows reads a fixed-size window of
  ``window`` entries (the largest chunk's) as a (rows, D) BCSR, so every chunk has the same
  shapes without a padded copy. A fit reads them where they lie on a CPU (from their first
  64-byte boundary on, the entries before it copied; see ``_inplace``), so the device holds
  no second copy of X;
* for each chunk, the order of its entries by column (4 bytes per stored entry): the chunk's
  transpose, CSR of the (D, rows) matrix Xᵀ, is gathered from the rows' window through it, so
  that Xᵀ·dZ of a chunk is again a CSR × dense product.

Both products then run on the sparse CSR kernels of the platform (a CPU custom call, cuSPARSE
or JAX's generic lowering). At the rcv1 shape Xᵀ·dZ gathered through the order was slower
than from stored transposed copies (values and row ids, 12 bytes per entry in float64) and
much faster than a scatter-add into dW (``benchmarks/results/sparse-products-cpu.md``): the
order costs a Newton-CG fit some time and saves 8 of those 12 bytes per entry
(``benchmarks/results/sparse-memory-cpu.md``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _inplace
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

    def to_dense(self) -> np.ndarray:
        """The (N, D) dense array (for small problems: checks and references)."""
        dense = np.zeros(self.shape, self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        np.add.at(dense, (rows, self.indices), self.data)
        return dense


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
    csr = sp.csr_matrix(X)  # no copy of a CSR input
    try:
        csr.check_format(full_check=True)
    except ValueError as err:
        raise ValueError(f"sparse `{name}` is not a valid CSR matrix: {err}") from None
    if not _canonical(csr):  # sorted, no duplicates: else work on a copy
        csr = csr.copy()
        csr.sum_duplicates()  # also sorts the indices; explicit zeros stay (they change nothing)
    if csr.nnz >= 2**31:
        raise ValueError(f"sparse `{name}` stores {csr.nnz} entries; at most 2**31 - 1 are supported.")
    if csr.shape[1] >= 2**31:
        raise ValueError(f"sparse `{name}` has {csr.shape[1]} columns; at most 2**31 - 1 are supported.")
    # float64 data without jax_enable_x64 becomes float32, as a dense X does on the device.
    data = csr.data.astype(jax.dtypes.canonicalize_dtype(csr.dtype), copy=False)
    return CSR(csr.indptr.astype(np.int64, copy=False), csr.indices.astype(np.int32, copy=False),
               data, csr.shape)


def _canonical(csr) -> bool:
    """Indices strictly increasing within every row (sorted, no duplicates), checked in one
    vectorised pass (scipy's ``has_canonical_format`` flag is not kept by ``load_npz``)."""
    if csr.nnz < 2:
        return True
    increasing = np.diff(csr.indices.astype(np.int64)) > 0
    row_starts = np.zeros(csr.nnz, bool)
    row_starts[csr.indptr[1:-1][csr.indptr[1:-1] < csr.nnz]] = True  # a new row may go down
    return bool(np.all(increasing | row_starts[1:]))


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
    """Sparse X (N, D) laid out for the engine's chunks of ``chunk_rows`` rows (see module doc).

    Leaves: ``data``, ``indices``, ``indptr``: X itself in CSR (flat, as the caller had it);
    ``data_head``, ``indices_head``: None, or, when ``data``/``indices`` are the caller's arrays
    read in place from their first 64-byte boundary on (``data_shift``/``indices_shift``
    entries in), the entries before it (copied); ``t_order`` (nnz,): chunk by chunk, the
    positions of the chunk's entries within the chunk sorted by column (rows ascending within
    a column), with ``t_indptr`` (C, D + 1) each chunk's column pointers (both None when only
    scores are needed). A chunk reads a window of ``window`` entries (the most any chunk
    holds) from the flat arrays, so no padded copy is made; a short last chunk, a window of
    ``last_window`` (its own entries: its windows do not depend on the weights, so XLA
    computes them once per program and keeps them). Its transpose is gathered from the window
    through ``t_order``.
    """

    def __init__(self, data, indices, indptr, data_head, indices_head, t_order, t_indptr, shape,
                 chunk_rows, window, last_window, blocks=1, data_shift=0, indices_shift=0):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.data_head, self.indices_head = data_head, indices_head
        self.t_order, self.t_indptr = t_order, t_indptr
        self.shape, self.chunk_rows, self.window = tuple(shape), int(chunk_rows), int(window)
        self.last_window = int(last_window)
        self.blocks = int(blocks)  # >1: every leaf has a leading axis of row blocks (devices)
        self.data_shift, self.indices_shift = int(data_shift), int(indices_shift)

    kind = "sparse"  # see _layouts
    per_device = True  # on a mesh, laid out with a leading axis of row blocks (``blocks``)

    def tree_flatten(self):
        return ((self.data, self.indices, self.indptr, self.data_head, self.indices_head, self.t_order,
                 self.t_indptr),
                (self.shape, self.chunk_rows, self.window, self.last_window, self.blocks, self.data_shift,
                 self.indices_shift))

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(*leaves, *aux)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nnz(self) -> int:
        """Stored entries (of one block of rows)."""
        return int(self.data.shape[-1]) + self.data_shift

    def local(self) -> SparseRows:
        """The block one device holds, inside ``shard_map`` (leaves of leading size 1)."""
        leaves = [None if a is None else a[0] for a in self.tree_flatten()[0]]
        return SparseRows(*leaves, (self.shape[0] // self.blocks, self.shape[1]), self.chunk_rows,
                          self.window, self.last_window)

    @staticmethod
    def _window(body, head, shift: int, at, length: int):
        """Entries ``[at, at + length)`` of a flat array held as ``head`` (its first ``shift``
        entries) and ``body`` (the rest, read in place), or as ``body`` alone (``shift`` 0)."""
        if not shift:
            return lax.dynamic_slice_in_dim(body, at, length)
        if body.shape[0] < length:  # one window spans (nearly) all entries
            return lax.dynamic_slice_in_dim(jnp.concatenate([head, body]), at, length)
        # The window's part of the body, behind the head: joined they are contiguous when the
        # window starts inside the head; otherwise the window is the body's part alone.
        joined = jnp.concatenate([head, lax.dynamic_slice_in_dim(body, jnp.maximum(at - shift, 0), length)])
        return lax.dynamic_slice_in_dim(joined, jnp.where(at < shift, at, shift), length)

    def chunk(self, start, size: int) -> SparseChunk:
        """Rows ``[start, start + size)``; ``start`` a multiple of ``chunk_rows`` (may be traced)."""
        jsparse = _jsparse()
        d = self.shape[1]
        n = self.shape[0]
        if size not in (self.chunk_rows, n % self.chunk_rows):  # (callers chunk by the layout's rows)
            raise ValueError(f"a chunk of {size} rows of a layout of {self.chunk_rows}-row chunks over {n} rows.")
        length = self.last_window if size == n % self.chunk_rows else self.window
        first = self.indptr[start]
        # The window starts at the chunk's first entry, or earlier near the end of the arrays;
        # the local row pointers skip what lies before the chunk.
        at = jnp.minimum(first, self.nnz - length)
        local = lax.dynamic_slice_in_dim(self.indptr, start, size + 1) - at
        data = self._window(self.data, self.data_head, self.data_shift, at, length)
        indices = self._window(self.indices, self.indices_head, self.indices_shift, at, length)
        rows = jsparse.BCSR(_whole_window(data, indices, local), shape=(size, d))
        transposed = None
        if self.t_order is not None:
            # Entry q of the transposed window is entry t_order[q] of the chunk: its value and
            # its row, gathered from the rows' window (q outside the chunk is masked to zero).
            position = lax.dynamic_slice_in_dim(self.t_order, at, length) + (first - at)
            starts = jnp.zeros(length + 1, jnp.int32).at[local[:-1]].add(1)
            row_of = jnp.cumsum(starts[:-1]) - 1  # the local row of each window position
            take = lambda a: jnp.take(a, position, mode="clip")  # noqa: E731
            index = start // self.chunk_rows
            t_local = lax.dynamic_index_in_dim(self.t_indptr, index, keepdims=False) + (first - at)
            transposed = jsparse.BCSR(_whole_window(take(data), take(row_of).astype(jnp.int32), t_local),
                                      shape=(d, size))
        return SparseChunk(rows, transposed)


def _whole_window(data, indices, local):
    """A window as a CSR whose pointers run from 0 to the window's length: the entries before
    and after the chunk join its first and last row as zeros at column 0 (their own columns may
    lie past a short last chunk). The GPU's BCSR product reads all ``nse`` entries by position,
    not only those the row pointers cover: windows with entries outside ``[local[0], local[-1])``
    gave wrong products on an H200."""
    position = jnp.arange(data.shape[0], dtype=local.dtype)
    inside = (position >= local[0]) & (position < local[-1])
    whole = local.at[0].set(0).at[-1].set(data.shape[0])
    return (jnp.where(inside, data, jnp.zeros((), data.dtype)),
            jnp.where(inside, indices, jnp.zeros((), indices.dtype)), whole)


class SparseChunk(NamedTuple):
    """One chunk of sparse rows: ``rows`` (size, D) and its transpose (D, size), both BCSR; a
    row block of ``_layouts``' protocol (scores, transposed product, squares)."""

    rows: Any  # jax.experimental.sparse.BCSR
    transposed: Any  # BCSR or None

    @property
    def dtype(self):
        return self.rows.data.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape

    def scores(self, W: jax.Array) -> jax.Array:
        """X_chunk · W, (size, K), a CSR × dense product."""
        return self.rows @ W

    def transposed_product(self, dz: jax.Array) -> jax.Array:
        """X_chunkᵀ · dz, (D, K), a CSR × dense product with the chunk's transposed copy."""
        return self.transposed @ dz.astype(self.dtype)

    def add_transposed_product(self, gW: jax.Array, dz: jax.Array, feature_blocks: int) -> jax.Array:
        """gW + X_chunkᵀ · dz (one product: the kernel reads only the stored entries, so
        ``feature_blocks`` has nothing to bound)."""
        return gW + self.transposed_product(dz).astype(gW.dtype)

    def squares(self) -> SparseChunk:
        """The chunk with every stored value squared (the same pattern): X∘X for a Hessian's
        diagonal."""
        jsparse = _jsparse()
        square = lambda m: None if m is None else jsparse.BCSR(  # noqa: E731
            (jnp.square(m.data), m.indices, m.indptr), shape=m.shape)
        return SparseChunk(square(self.rows), square(self.transposed))


def chunked_rows(csr: CSR, chunk_rows: int, *, transposed: bool = True, blocks: int = 1,
                 sharding=None, in_place: bool = False) -> SparseRows:
    """Lay ``csr`` out for the engine in chunks of ``chunk_rows`` rows, on the device: X's own
    CSR arrays and, for the gradient's Xᵀ·dZ, each chunk's order by column (4 bytes per
    stored entry, built on the host).

    ``in_place``: on a CPU, large ``data``/``indices`` are read where they lie instead of
    copied (for callers that block until their program ends: the arrays must not change
    meanwhile). ``blocks`` > 1 splits the rows into that many equal blocks, one per device of a
    data axis, each laid out on its own (padded to the largest block) and stacked along a
    leading axis placed by ``sharding``.
    """
    n, d = csr.shape
    c = max(1, min(chunk_rows, n // blocks))
    if blocks == 1:
        leaves, window, last_window = _host_layout(csr.indptr, csr.indices, csr.data, d, c, transposed)
    else:
        parts = _block_layouts(csr, blocks, c, transposed)
        window, last_window, longest = (max(p[j] for p in parts) for j in (1, 2, 3))
        leaves = _stacked(parts, longest)
        in_place = False
    data, indices, indptr, t_order, t_indptr = leaves
    # Copies complete before returning: X's arrays may be the caller's (see _inplace.private_copy).
    put = lambda a: None if a is None else _inplace.private_copy(a, sharding)  # noqa: E731
    (data, data_head, data_shift), (indices, indices_head, indices_shift) = (
        _adopted(a) if in_place else (put(a), None, 0) for a in (data, indices))
    return SparseRows(data, indices, put(indptr), data_head, indices_head, put(t_order), put(t_indptr),
                      (n, d), c, window, last_window, blocks, data_shift, indices_shift)


def _block_layouts(csr: CSR, blocks: int, c: int, transposed: bool) -> list:
    """(leaves, window, last window, stored entries) of each of ``blocks`` equal blocks of rows."""
    size, d = csr.shape[0] // blocks, csr.shape[1]
    parts = []
    for i in range(blocks):
        lo, hi = int(csr.indptr[i * size]), int(csr.indptr[(i + 1) * size])
        leaves, window, last_window = _host_layout(csr.indptr[i * size:(i + 1) * size + 1] - lo,
                                                   csr.indices[lo:hi], csr.data[lo:hi], d, c, transposed)
        parts.append((leaves, window, last_window, leaves[0].shape[0]))
    return parts


def _stacked(parts: list, longest: int) -> list:
    """The blocks' leaves stacked along a leading axis, the flat ones padded to ``longest``."""
    padded = [[None if a is None else (np.pad(a, (0, longest - a.shape[0])) if j in (0, 1, 3) else a)
               for j, a in enumerate(leaves)] for leaves, *_ in parts]
    return [None if padded[0][j] is None else np.stack([p[j] for p in padded]) for j in range(len(padded[0]))]


class ProcessRows:
    """This process's rows of an X whose rows are split over the processes of a multi-process
    run (``jax.distributed``): pass ``ProcessRows(X_local)`` as ``X`` to :func:`jsoftmax.fit`
    with a ``mesh`` and ``data_axis`` spanning the processes' devices, and each process reads
    only its own rows. ``X_local`` (n, D): dense (NumPy) or sparse (scipy.sparse, BCOO, BCSR),
    the same n on every process, process p holding global rows ``[p·n, (p + 1)·n)`` (the
    devices' order along the data axis). Labels and sample weights are global arrays, as
    ``jax.make_array_from_process_local_data`` makes them.

    Example:
      >>> import numpy as np, jsoftmax
      >>> rows = jsoftmax.ProcessRows(np.ones((4, 3), np.float32))
      >>> rows.shape  # the global shape: every process's rows
      (4, 3)
    """

    def __init__(self, rows: Any):
        if not (is_sparse(rows) or isinstance(rows, CSR) or hasattr(rows, "shape")):
            raise TypeError(f"ProcessRows takes a 2-D NumPy or sparse array; got {type(rows).__name__}.")
        if len(rows.shape) != 2:
            raise ValueError(f"ProcessRows takes this process's rows as a 2-D (n, D) array; got shape {rows.shape}.")
        self.rows = rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.shape[0] * jax.process_count(), self.rows.shape[1])

    @property
    def dtype(self):
        return self.rows.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def sparse(self) -> bool:
        return is_sparse(self.rows) or isinstance(self.rows, CSR)


def agree_on_process_rows(n: int, d: int, finite: bool, mesh, data_axis: str) -> None:
    """Every process holds ``n`` rows of ``d`` features, all finite, that its devices of the data
    axis divide evenly; otherwise every process raises the same ``ValueError`` (one small
    all-gather, before anything else a fit does across processes: no process waits forever)."""
    from jax.experimental import multihost_utils

    processes = jax.process_count()
    blocks = mesh.shape[data_axis]
    local_blocks = max(blocks // processes, 1)
    facts = np.asarray(multihost_utils.process_allgather(np.array([n, d, finite], np.int64)))
    here = f"(this is process {jax.process_index()})"
    if np.any(facts[:, :2] != facts[0, :2]):
        raise ValueError(f"every process must hold the same number of rows and features of `X`; they hold "
                         f"{[tuple(f) for f in facts[:, :2].tolist()]} {here}.")
    if not facts[:, 2].all():
        raise ValueError(f"`X` holds NaN or inf on process(es) {np.flatnonzero(facts[:, 2] == 0).tolist()}; "
                         "clean or impute the features first.")
    if blocks % processes or n % local_blocks:
        raise ValueError(f"each process's {n} rows of `X` must split evenly over its {local_blocks} device(s) of "
                         f"the {data_axis!r} axis ({blocks} in all); pad them with empty, zero-weight rows.")


def across_processes(csr: CSR, chunk_rows: int, mesh, data_axis: str) -> SparseRows:
    """A sparse X of which each process holds its own rows (``csr``, checked by
    :func:`agree_on_process_rows`), laid out as one global :class:`SparseRows`: each local
    device of the data axis its block of the process's rows. The processes agree (two small
    all-gathers) on the chunk size, then on the windows and the padded length."""
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    processes = jax.process_count()
    blocks = mesh.shape[data_axis]
    local_blocks = blocks // processes
    n, d = csr.shape
    c = max(1, min(chunk_rows, n // local_blocks))
    c = int(np.asarray(multihost_utils.process_allgather(np.array([c], np.int64))).min())
    parts = _block_layouts(csr, local_blocks, c, True)
    sizes = np.asarray(multihost_utils.process_allgather(
        np.array([max(p[j] for p in parts) for j in (1, 2, 3)], np.int64)))  # windows and lengths
    window, last_window, longest = (int(v) for v in sizes.reshape(-1, 3).max(axis=0))
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    put = lambda a: None if a is None else jax.make_array_from_process_local_data(  # noqa: E731
        sharding, a, (blocks,) + a.shape[1:])
    data, indices, indptr, t_order, t_indptr = (put(a) for a in _stacked(parts, longest))
    return SparseRows(data, indices, indptr, None, None, t_order, t_indptr, (n * processes, d), c, window,
                      last_window, blocks)


def _adopted(a: np.ndarray):
    """(body, head, shift): a large flat host array on a CPU device read in place from its
    first 64-byte boundary on (``shift`` entries in; ``head`` a copy of those), or one copy
    (``head`` None, ``shift`` 0) where it cannot be (see ``_inplace``)."""
    shift = _inplace.alignment_shift(a) if _inplace.readable_in_place(a) else None
    body = None if shift is None else _inplace.adopted(a[shift:])
    if body is None:
        return jax.device_put(a), None, 0
    return body, (jax.device_put(a[:shift]) if shift else None), shift


def _host_layout(indptr, indices, data, d: int, c: int, transposed: bool):
    """The leaves (data, indices, indptr, t_order, t_indptr) of one block of rows as host
    arrays, its window and its last window (see :class:`SparseRows`)."""
    n = indptr.shape[0] - 1
    n_chunks = -(-n // c)
    if data.shape[0] == 0:  # one stored zero, so that every window has an entry to point at
        data, indices = np.zeros(1, data.dtype), np.zeros(1, np.int32)
    window = max(1, max_chunk_entries(indptr, c))
    last_window = max(1, int(indptr[n] - indptr[n - n % c])) if n % c else window
    t_order = t_indptr = None
    if transposed:  # allocated aligned, so that a CPU device adopts them without a copy
        t_order = _inplace.aligned_empty((data.shape[0],), np.int32)
        t_order[indptr[-1]:] = 0
        t_indptr = _inplace.aligned_empty((n_chunks, d + 1), np.int32)
        t_indptr[:, 0] = 0
        for i in range(n_chunks):
            first, last = int(indptr[i * c]), int(indptr[min((i + 1) * c, n)])
            cols = indices[first:last]
            # by column; rows stay ascending within one
            t_order[first:last] = np.argsort(cols, kind="stable")
            np.cumsum(np.bincount(cols, minlength=d), out=t_indptr[i, 1:])
    return [data, indices, indptr.astype(np.int32), t_order, t_indptr], window, last_window


def column_moments(X) -> tuple[np.ndarray, np.ndarray]:
    """(0, σ) per feature of a scipy.sparse X for scaling without centring (scikit-learn's
    ``StandardScaler(with_mean=False)``): σ² = mean(x²) − mean(x)², from the stored entries,
    in float64."""
    csr = X.tocsr()
    n, d = csr.shape
    sums = np.bincount(csr.indices, weights=csr.data.astype(np.float64), minlength=d)
    squares = np.bincount(csr.indices, weights=np.square(csr.data.astype(np.float64)), minlength=d)
    mean = sums / n
    variance = np.maximum(squares / n - mean**2, 0.0)
    return np.zeros(d), np.sqrt(variance)
