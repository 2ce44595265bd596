r"""The one compute engine behind the risk, its gradient and the fused linear cross-entropy.

For a block of rows with scores :math:`z = xW + b`, targets :math:`t = (1-\varepsilon)y + \varepsilon/K`
and row coefficients :math:`c`:

.. math::

    \ell_n = \mathrm{lse}(z_n) \textstyle\sum_k t_{nk} - t_n^\top z_n + \zeta\,\mathrm{lse}(z_n)^2

    \partial z_n = c_n\big(\hat y_n (\textstyle\sum_k t_{nk} + 2\zeta\,\mathrm{lse}(z_n)) - t_n\big)

For probability rows :math:`\sum_k t_{nk} = 1` and with :math:`\zeta = 0` this is DERIVATION.md's
:math:`\hat y - y`; the general form keeps the gradient true for any row.

Rows are processed in chunks by a ``lax.fori_loop`` so that only ``chunk_rows × K`` scores are
live at a time. Measured on this machine (2 cores, f32, N=8192, D=512, K=1000): the whole batch
at once ran at 0.99x the time of the two matrix products alone (x@W, xᵀ@dz); 1024-row chunks ran
at 0.90x, because each chunk's scores stay in cache between the max, the exp-sum and the
gradient product. The chunk size comes from a rule, see :func:`choose_chunk_rows`. Integer labels are compared against an iota inside the fused expression
(a scatter into a one-hot matrix measured 1.5x the floor).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._validate import accumulation_dtype

# Block-size rule constants; see choose_chunk_rows.
DEFAULT_CHUNK_BYTES = 128 * 2**20  # memory budget for one f32 block of scores
CACHE_BLOCK_BYTES = 4 * 2**20
MIN_EFFICIENT_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class Options:
    """Static options: each changes the compiled program, so each is a jit static argument."""

    soft: bool  # labels are (N, K) probability rows
    ignore_index: int
    smoothing: bool = False  # label smoothing is non-zero (or traced)
    l2: bool = False  # an L2 penalty is non-zero (or traced)
    z_loss: bool = False  # a z-loss coefficient is non-zero (or traced)
    chunk_rows: int | None = None  # rows per chunk; None: choose_chunk_rows
    # Sharding (see _sharding.py): a jax.sharding.Mesh and the axes rows / classes are split over.
    mesh: object = None
    data_axis: str | None = None
    class_axis: str | None = None


class BlockTerms(NamedTuple):
    """Per-row quantities of one block of rows."""

    loss: jax.Array  # (n,) unweighted per-row loss (meaningless on ignored rows)
    lse: jax.Array  # (n,) log-sum-exp of the scores
    dz: jax.Array | None  # (n, K) dR/dz, already scaled by the row coefficients


class Evaluation(NamedTuple):
    value: jax.Array  # sum_n c_n l_n (+ l2 term)
    gW: jax.Array | None  # (D, K) accumulation dtype
    gb: jax.Array | None  # (K,)
    gX: jax.Array | None  # (N, D) accumulation dtype
    loss: jax.Array | None  # (N,) per-row losses when rows_out
    lse: jax.Array | None  # (N,) per-row log-sum-exp when rows_out


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` accumulated in float32 for 16-bit inputs (the tensor-core convention)."""
    return jnp.matmul(a, b, preferred_element_type=accumulation_dtype(a.dtype))


def scores(W: jax.Array, b: jax.Array | None, X: jax.Array) -> jax.Array:
    """Z = XW + b in the accumulation dtype, shape (N, K)."""
    z = matmul(X, W)
    return z if b is None else z + b.astype(z.dtype)


def counted_rows(labels: jax.Array, opts: Options, dtype) -> jax.Array:
    """1 for rows that count, 0 for rows whose label is ``ignore_index``; shape (N,)."""
    if opts.soft:
        return jnp.ones(labels.shape[:1], dtype)
    return (labels != opts.ignore_index).astype(dtype)


def choose_chunk_rows(n: int, k: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk: a rule from block sizes, measured on this machine (2 cores, f32).

    A block of ``rows × K`` float32 scores should (a) fill about 4 MiB, which kept small-K
    problems in cache (K=50: one 16384-row block beat 2048-row blocks), but (b) hold at least
    1024 rows, below which the matrix products lose efficiency (K=32000: 1024 rows ran at
    0.98× the three-matmul floor, 256 rows at 1.09×, 64 rows at 1.58×), and (c) never exceed
    ``budget_bytes`` (default 128 MiB), the memory bound. Powers of two, at least 64 rows,
    at most ``n``.
    """
    cache_rows = _pow2_floor(CACHE_BLOCK_BYTES // (4 * k))
    budget_rows = _pow2_floor(budget_bytes // (4 * k))
    rows = min(max(cache_rows, MIN_EFFICIENT_ROWS), budget_rows)
    return min(n, max(64, rows))


def choose_chunks(n: int, k: int, budget_bytes: int | None = None) -> tuple[int, int | None]:
    """(rows per chunk, classes per chunk or None) for f32 score blocks within ``budget_bytes``.

    Rows follow :func:`choose_chunk_rows`. Classes are split only when even
    64 rows of all K classes exceed the budget (K > 524288 at the default 128 MiB); then 256-row
    blocks by as many classes as fit. Class blocks recompute the scores (measured at K=32000:
    1.25–1.46× the floor against 0.98× without), so they are the memory fallback, not the default.
    """
    budget = DEFAULT_CHUNK_BYTES if budget_bytes is None else budget_bytes
    rows = choose_chunk_rows(n, k, budget)
    if 64 * k * 4 <= budget:
        return rows, None
    rows = min(n, 256)
    classes = max(128, 2 ** int(math.log2(budget // (4 * rows))))
    return rows, min(classes, k)


def _pow2_floor(value: int) -> int:
    return 2 ** int(math.log2(max(value, 1)))


def block_terms(z, labels, coef, eps, zeta, opts: Options, *, need_dz: bool, lse=None,
                class_offset=None) -> BlockTerms:
    """Loss, log-sum-exp and (optionally) the score gradient of one block of rows.

    Args:
      z: (n, K) scores in the accumulation dtype.
      labels: (n,) integer ids or (n, K) probability rows.
      coef: (n,) row coefficients c_n (0 on rows that do not count).
      eps: label smoothing (used when ``opts.smoothing``); zeta: z-loss (when ``opts.z_loss``).
      lse: (n,) log-sum-exp if already known (the recompute backward); computed otherwise.
      class_offset: inside ``shard_map`` with ``opts.class_axis``: z holds classes
        [offset, offset + K_local) of this device; every reduction over classes is then
        completed across the class axis (pmax for the max, psum for the sums).
    """
    axis = opts.class_axis if class_offset is not None else None
    k_local = z.shape[-1]
    k = k_local * (lax.axis_size(axis) if axis else 1)

    def class_sum(v):
        return lax.psum(v, axis) if axis else v

    if lse is None:
        m = jnp.max(z, axis=-1, keepdims=True)
        if axis:
            m = lax.pmax(m, axis)
        m = lax.stop_gradient(m)
        e = jnp.exp(z - m)
        s = class_sum(jnp.sum(e, axis=-1, keepdims=True))
        lse = (m + jnp.log(s))[:, 0]
        p = e / s if need_dz else None
    else:
        p = jnp.exp(z - lse[:, None]) if need_dz else None
    offset = 0 if class_offset is None else class_offset
    if opts.soft:
        y = labels.astype(z.dtype)
        y_sum = class_sum(jnp.sum(y, axis=-1))
        z_y = class_sum(jnp.sum(y * z, axis=-1))
    else:
        # A gather of N scores, not a one-hot product: O(N) work and memory.
        local = labels - offset
        picked = jnp.take_along_axis(z, jnp.clip(local, 0, k_local - 1)[:, None], axis=-1)[:, 0]
        z_y = class_sum(jnp.where((local >= 0) & (local < k_local), picked, 0)) if axis else picked
        y_sum = None  # one-hot rows sum to one
    if opts.smoothing:
        eps = jnp.asarray(eps, z.dtype)
        # Smoothed one-hot rows still sum to one; probability rows keep their own sum.
        t_sum = None if y_sum is None else (1 - eps) * y_sum + eps
        t_z = (1 - eps) * z_y + eps * class_sum(jnp.sum(z, axis=-1)) / k
    else:
        t_sum, t_z = y_sum, z_y
    loss = lse * (1 if t_sum is None else t_sum) - t_z
    if opts.z_loss:
        loss = loss + jnp.asarray(zeta, z.dtype) * lse**2
    if not need_dz:
        return BlockTerms(loss, lse, None)

    p_scale = t_sum
    if opts.z_loss:
        p_scale = (1 if p_scale is None else p_scale) + 2 * jnp.asarray(zeta, z.dtype) * lse
    p_scaled = p if p_scale is None else p * p_scale[:, None]
    if opts.soft:
        target = y
    else:
        target = labels[:, None] == lax.broadcasted_iota(labels.dtype, z.shape, 1) + offset
    if opts.smoothing:
        target = (1 - eps) * target + eps / k
    dz = coef[:, None] * (p_scaled - target)
    return BlockTerms(loss, lse, dz)


def _slices(total: int, size: int) -> tuple[int, int]:
    """(number of whole blocks, size of the remainder block) for blocks of ``size``."""
    return total // size, total % size


def _row_target(labels, opts: Options, eps, k: int, start, width: int, dtype):
    """Targets t for classes [start, start + width) of a block of rows, shape (n, width)."""
    if opts.soft:
        target = lax.dynamic_slice_in_dim(labels, start, width, axis=1).astype(dtype)
    else:
        ids = lax.broadcasted_iota(labels.dtype, (labels.shape[0], width), 1) + start
        target = (labels[:, None] == ids).astype(dtype)
    if opts.smoothing:
        target = (1 - eps) * target + eps / k
    return target


def _full_class_block(sums, x, y, cf, lse_in, ctx):
    """One row block with all K classes at once: the (rows, K) scores are materialised."""
    W, b, eps, zeta, opts, flags = ctx
    terms = block_terms(scores(W, b, x), y, cf, eps, zeta, opts, need_dz=flags["need_dz"], lse=lse_in,
                        class_offset=flags["class_offset"])
    sums = dict(sums)
    sums["value"] = sums["value"] + jnp.sum(cf * jnp.where(cf != 0, terms.loss, 0))
    rows = {}
    if flags["need_dz"]:
        dz = terms.dz.astype(x.dtype)  # 16-bit inputs: the products still accumulate in f32
        if flags["grad_W"]:
            sums["gW"] = sums["gW"] + matmul(x.T, dz)
            if "gb" in sums:
                sums["gb"] = sums["gb"] + jnp.sum(terms.dz, axis=0)
        if flags["grad_X"]:
            rows["gX"] = matmul(dz, W.T)
    if flags["rows_out"]:
        rows["loss"], rows["lse"] = terms.loss, terms.lse
    return sums, rows


def _class_chunked_block(sums, x, y, cf, lse_in, ctx):
    """One row block, classes in blocks of ``class_chunk`` with an online log-sum-exp.

    Pass 1 runs the scores block by block keeping a running max and rescaled sum (and the
    target terms); pass 2 recomputes each block's scores to form its gradient. Only
    (rows, class_chunk) scores are ever live, at the price of computing the scores twice.
    """
    W, b, eps, zeta, opts, flags = ctx
    n, k = x.shape[0], W.shape[1]
    width = flags["class_chunk"]
    n_full, rem = _slices(k, width)
    acc = accumulation_dtype(x.dtype)

    def block_scores(start, size):
        w = lax.dynamic_slice_in_dim(W, start, size, axis=1)
        z = matmul(x, w)
        if b is not None:
            z = z + lax.dynamic_slice_in_dim(b, start, size).astype(z.dtype)
        return z, w

    def over_classes(body, init):
        carry = lax.fori_loop(0, n_full, lambda j, c: body(j * width, width, c), init)
        return body(n_full * width, rem, carry) if rem else carry

    if opts.soft:
        y_sum = jnp.sum(y.astype(acc), axis=-1)

    def stats(start, size, carry):
        m, s, z_y, z_sum = carry
        z, _ = block_scores(start, size)
        m_new = jnp.maximum(m, lax.stop_gradient(jnp.max(z, axis=-1)))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=-1)
        if opts.soft:
            z_y = z_y + jnp.sum(lax.dynamic_slice_in_dim(y, start, size, axis=1).astype(acc) * z, axis=-1)
        else:
            inside = (y >= start) & (y < start + size)
            picked = jnp.take_along_axis(z, jnp.clip(y - start, 0, size - 1)[:, None], axis=-1)[:, 0]
            z_y = z_y + jnp.where(inside, picked, 0)
        if opts.smoothing:
            z_sum = z_sum + jnp.sum(z, axis=-1)
        return m_new, s, z_y, z_sum

    zeros = jnp.zeros((n,), acc)
    m, s, z_y, z_sum = over_classes(stats, (jnp.full((n,), -jnp.inf, acc), zeros, zeros, zeros))
    lse = m + jnp.log(s) if lse_in is None else lse_in
    t_sum = y_sum if opts.soft else None
    t_z = z_y
    if opts.smoothing:
        e = jnp.asarray(eps, acc)
        t_sum = (1 - e) * y_sum + e if opts.soft else None
        t_z = (1 - e) * z_y + e * z_sum / k
    loss = lse * (1 if t_sum is None else t_sum) - t_z
    if opts.z_loss:
        loss = loss + jnp.asarray(zeta, acc) * lse**2
    sums = dict(sums)
    sums["value"] = sums["value"] + jnp.sum(cf * jnp.where(cf != 0, loss, 0))
    rows = {}
    if flags["need_dz"]:
        scale = 1 if t_sum is None else t_sum
        if opts.z_loss:
            scale = scale + 2 * jnp.asarray(zeta, acc) * lse
        scale = jnp.broadcast_to(jnp.asarray(scale, acc), (n,))

        def grads(start, size, carry):
            gW, gb, gx = carry
            z, w = block_scores(start, size)
            p = jnp.exp(z - lse[:, None])
            target = _row_target(y, opts, eps, k, start, size, acc)
            dz_acc = cf[:, None] * (p * scale[:, None] - target)
            dz = dz_acc.astype(x.dtype)
            if gW is not None:
                block = lax.dynamic_slice_in_dim(gW, start, size, axis=1) + matmul(x.T, dz)
                gW = lax.dynamic_update_slice_in_dim(gW, block, start, axis=1)
                if gb is not None:
                    gb = lax.dynamic_update_slice_in_dim(
                        gb, lax.dynamic_slice_in_dim(gb, start, size) + jnp.sum(dz_acc, axis=0), start, 0)
            if gx is not None:
                gx = gx + matmul(dz, w.T)
            return gW, gb, gx

        gx0 = jnp.zeros((n, x.shape[1]), acc) if flags["grad_X"] else None
        gW, gb, gx = over_classes(grads, (sums.get("gW"), sums.get("gb"), gx0))
        if flags["grad_W"]:
            sums["gW"] = gW
            if gb is not None:
                sums["gb"] = gb
        if flags["grad_X"]:
            rows["gX"] = gx
    if flags["rows_out"]:
        rows["loss"], rows["lse"] = loss, lse
    return sums, rows


def evaluate(
    W, b, X, labels, coef, l2, eps, zeta, opts: Options, *,
    grad_W: bool, grad_X: bool, rows_out: bool = False, chunk_rows: int | None = None,
    class_chunk: int | None = None, lse=None, class_offset=None,
) -> Evaluation:
    """Risk-like sum ``sum_n c_n l_n`` and the requested analytic gradients, by row chunks.

    ``coef`` (N,) carries everything row-wise: sample weights, the ignore mask, the 1/N or
    1/sum(w) normalisation, or (in a recompute backward) the per-row cotangent. With ``lse``
    (N,) given, the log-sum-exp is not recomputed. ``class_chunk`` splits the classes too
    (online log-sum-exp). Runs inside the caller's ``jit``.
    """
    n, d = X.shape
    k = W.shape[1]
    acc = accumulation_dtype(X.dtype)
    c = n if chunk_rows is None else max(1, min(int(chunk_rows), n))
    flags = {"need_dz": grad_W or grad_X, "grad_W": grad_W, "grad_X": grad_X, "rows_out": rows_out,
             "class_chunk": class_chunk, "class_offset": class_offset}
    if class_offset is not None and class_chunk is not None and class_chunk < k:
        raise ValueError("class blocks and a class-sharded mesh axis cannot be combined; the mesh "
                         "already splits the classes (pass class_chunk_size=None).")
    ctx = (W, b, eps, zeta, opts, flags)
    block = _full_class_block if class_chunk is None or class_chunk >= k else _class_chunked_block
    sliced = (X, labels, coef) + ((lse,) if lse is not None else ())

    def call(sums, arrays):
        x, y, cf = arrays[:3]
        return block(sums, x, y, cf, arrays[3] if lse is not None else None, ctx)

    sums = {"value": jnp.zeros((), acc)}
    if grad_W:
        sums["gW"] = jnp.zeros((d, k), acc)
        if b is not None:
            sums["gb"] = jnp.zeros((k,), acc)
    if c == n:
        sums, rows = call(sums, sliced)
    else:
        # Row outputs (gX, loss, lse) are written in place into (N, ...) buffers.
        rows = {}
        if grad_X:
            rows["gX"] = jnp.zeros((n, d), acc)
        if rows_out:
            rows["loss"] = jnp.zeros((n,), acc)
            rows["lse"] = jnp.zeros((n,), acc)

        def step(state, start, size):
            sums, rows = state
            part = tuple(lax.dynamic_slice_in_dim(a, start, size, axis=0) for a in sliced)
            sums, out = call(sums, part)
            rows = {key: lax.dynamic_update_slice_in_dim(rows[key], out[key], start, 0) for key in rows}
            return sums, rows

        n_full, rem = _slices(n, c)
        state = lax.fori_loop(0, n_full, lambda i, st: step(st, i * c, c), (sums, rows))
        if rem:
            state = step(state, n_full * c, rem)
        sums, rows = state

    value = sums["value"]
    gW = sums.get("gW")
    if opts.l2:
        l2v = jnp.asarray(l2, acc)
        value = value + 0.5 * l2v * jnp.sum(jnp.square(W.astype(acc)))
        if gW is not None:
            gW = gW + l2v * W.astype(acc)
    return Evaluation(value, gW, sums.get("gb"), rows.get("gX"), rows.get("loss"), rows.get("lse"))
