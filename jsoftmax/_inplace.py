"""A dense NumPy X that the CPU device reads where it lies, without a copy (:class:`InPlaceRows`).

JAX on a CPU adopts a NumPy buffer without copying it only when the buffer is 64-byte aligned.
glibc places every large allocation 16 bytes past a page boundary, so ``jax.device_put(X)``
of a user's X copies it: a second X for the length of every fit
(``benchmarks/results/fit-memory-cpu.md``). Instead the device adopts X's values from its
first 64-byte boundary on, ``s`` values in, as rows of D:

.. math::

    F_i = (x_{i,s}, \\dots, x_{i,D-1}, x_{i+1,0}, \\dots, x_{i+1,s-1}), \\qquad i < N - 1,

so that row r of X is the last ``s`` values of F's row r − 1 followed by the first D − s of
row r. Two rows are copied to close the ends: ``edges[0]`` stands before F (its last ``s``
values are X's first) and ``edges[1]`` after it (its first D − s values end X's last row). A
chunk of rows is one slice of F plus one row, shifted into place in the copy that the chunk's
slice costs anyway: a fit runs as fast as on a copied X (interleaved at 100,000 × 256
float64: 1.54 s in place, 1.58 s copied); its first call compiles about 0.5 s longer, for the
three cases of a chunk (``benchmarks/results/fit-memory-cpu.md``).

Row indices stay row indices (no flat index reaches 2³¹ values). X must not change while a
program that reads it runs: the fits that use this block until they finish.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _layouts

ALIGNMENT = 64  # bytes: what XLA on CPU needs to adopt a host buffer
# Smaller X are copied as before: the copy is cheap and needs no other program.
MIN_BYTES = 16 * 2**20


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose buffer starts on a 64-byte boundary, so that
    ``jax.device_put`` adopts it on a CPU instead of copying it."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def private_copy(a: np.ndarray, sharding=None) -> jax.Array:
    """``a`` on the device (or ``sharding``) as a copy that is complete when this returns.

    ``jax.device_put`` may read a NumPy buffer after it has returned (the transfer is
    asynchronous) or adopt it without a copy on a CPU (an aligned buffer, whatever
    ``may_alias`` says), so a caller who changes the array after a call would change what the
    call computes. On a CPU the copy is made here, into an aligned buffer of the dtype JAX
    keeps, which the device then adopts (one copy, as before); elsewhere the transfer is
    waited for."""
    dtype = jax.dtypes.canonicalize_dtype(a.dtype)
    platform = (next(iter(sharding.device_set)).platform if sharding is not None
                else jax.devices()[0].platform)
    if platform == "cpu":
        own = aligned_empty(a.shape, dtype)
        own[...] = a
        a = own
    return jax.device_put(a, sharding).block_until_ready()


def alignment_shift(a: np.ndarray) -> int | None:
    """Values before ``a``'s first 64-byte boundary, or None when ``a`` cannot be read in place
    there (its address is not a multiple of its item size)."""
    address, itemsize = a.ctypes.data, a.dtype.itemsize
    return None if address % itemsize else ((-address) % ALIGNMENT) // itemsize


def readable_in_place(a: np.ndarray) -> bool:
    """A large C-ordered host array of a dtype JAX keeps, with the default device a CPU."""
    return (jax.devices()[0].platform == "cpu" and a.flags.c_contiguous and a.nbytes >= MIN_BYTES
            and jax.dtypes.canonicalize_dtype(a.dtype) == a.dtype)


def adopted(view: np.ndarray) -> jax.Array | None:
    """``view`` (64-byte aligned) on the default device without a copy, or None where this JAX
    copied it after all."""
    device = jax.device_put(view)
    return device if device.unsafe_buffer_pointer() == view.ctypes.data else None


def place(X, chunk_rows: int):
    """X on the default device: a NumPy X adopted in place when it is large, C-ordered and on
    a CPU (an :class:`InPlaceRows`, or the array itself when already aligned); otherwise one
    copy (``jax.device_put``). ``chunk_rows``: rows per chunk for whole-X passes."""
    if not isinstance(X, np.ndarray):
        return X
    shift = alignment_shift(X) if X.ndim == 2 and readable_in_place(X) else None
    n, d = X.shape if X.ndim == 2 else (0, 0)
    if not shift or shift > d or n < 2:  # aligned (JAX adopts it itself), or not eligible (one copy)
        return jax.device_put(X)
    flat = X.reshape(-1)
    body = adopted(flat[shift:shift + (n - 1) * d].reshape(n - 1, d))
    if body is None:
        return jax.device_put(X)
    edges = np.zeros((2, d), X.dtype)
    edges[0, d - shift:] = flat[:shift]
    edges[1, :d - shift] = flat[n * d - (d - shift):]
    return InPlaceRows(body, jax.device_put(edges), (n, d), shift, chunk_rows, host=X)


@jax.tree_util.register_pytree_node_class
class InPlaceRows:
    """Dense X (N, D) read in place (see the module doc). Leaves: ``body`` (N − 1, D), the
    adopted buffer, and ``edges`` (2, D); static: ``shape``, ``shift`` (s) and ``chunk_rows``
    (rows per chunk of a whole-X pass). ``host`` is the NumPy X (outside programs only)."""

    def __init__(self, body, edges, shape, shift: int, chunk_rows: int, host=None):
        self.body, self.edges = body, edges
        self.shape, self.shift, self.chunk_rows = tuple(shape), int(shift), int(chunk_rows)
        self.host = host

    kind = "dense"  # see _layouts; its chunks are dense arrays

    def tree_flatten(self):
        return (self.body, self.edges), (self.shape, self.shift, self.chunk_rows)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(*leaves, *aux)

    @property
    def dtype(self):
        return self.body.dtype

    @property
    def ndim(self) -> int:
        return 2

    def __array__(self, dtype=None, copy=None):
        """The NumPy X (fingerprints, host-side checks); not available inside a program."""
        if self.host is None:
            raise TypeError("an InPlaceRows inside a program has no host array.")
        return self.host if dtype is None else self.host.astype(dtype)

    def _rows(self, window):
        """Rows from ``size + 1`` consecutive rows of F (with the edges): each row is the last
        s values of one and the first D − s of the next."""
        d, s = self.shape[1], self.shift
        return jnp.concatenate([window[:-1, d - s:], window[1:, :d - s]], axis=1)

    def chunk(self, start, size: int) -> jax.Array:
        """Rows ``[start, start + size)`` as a (size, D) array; ``start`` may be traced."""
        n, d = self.shape
        if size == n:  # the whole of X (a small problem's single chunk)
            return self._rows(jnp.concatenate([self.edges[:1], self.body, self.edges[1:]]))

        def first():  # rows 0 .. size - 1: edges[0], then F's rows 0 .. size - 1
            return self._rows(jnp.concatenate([self.edges[:1], lax.slice_in_dim(self.body, 0, size)]))

        def middle():  # F's rows start - 1 .. start + size - 1
            return self._rows(lax.dynamic_slice_in_dim(self.body, start - 1, size + 1))

        def last():  # F's rows start - 1 .. n - 2, then edges[1]
            return self._rows(jnp.concatenate([lax.dynamic_slice_in_dim(self.body, start - 1, size),
                                               self.edges[1:]]))

        if isinstance(start, int):
            return first() if start == 0 else last() if start + size == n else middle()
        branch = jnp.where(start == 0, 0, jnp.where(start + size >= n, 1, 2))
        return lax.switch(branch, (first, last, middle) if size + 2 <= n else (first, last))

    def nonfinite_marker(self) -> jax.Array:
        """0 when every value of X is finite, NaN otherwise (``_layouts.nonfinite_marker``): the
        edges' padding zeros change nothing."""
        return _layouts.nonfinite_marker(self.body) + _layouts.nonfinite_marker(self.edges)
