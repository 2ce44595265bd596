r"""The one compute engine: Σₙ cₙℓₙ and its analytic gradients, by row chunks (and class blocks).

``evaluate`` is what every public loss runs (``docs/derivation.md`` §4–§6). Row coefficients
``coef`` (N,) carry everything row-wise — sample weights, the ignore mask, the 1/Σw of a mean,
or the per-row cotangent of a recompute backward — so the engine computes one quantity:

.. math::

    V = \sum_n c_n \ell_n, \qquad \partial V/\partial W = X^\top \partial Z, \quad
    \partial V/\partial b = \textstyle\sum_n \partial z_n, \quad \partial V/\partial X = \partial Z\,W^\top,
    \qquad \partial z_n = c_n\big(\hat y_n(\textstyle\sum_k t_{nk} + 2\zeta\,\mathrm{lse}_n) - t_n\big).

Rows go through a ``lax.fori_loop`` in chunks of ``Plan.chunk_rows`` so that only one block of
scores is live at a time. With ``Plan.class_chunk`` the classes go in blocks too: a first pass
merges each block's :class:`~jsoftmax._rows.RowStats` (an online log-sum-exp), a second pass
recomputes each block's scores for its gradient. On a mesh, :func:`evaluate` runs the same local
evaluation inside ``shard_map``; along the class axis the row statistics are completed with
``pmax``/``psum`` and each device keeps its own columns of dW and db; along the data axis the
value, dW and db are summed. The chunk-size rule comes from measurements recorded in
``benchmarks/results/`` (see :func:`choose_chunks`).
"""

from __future__ import annotations

import json
import math
from functools import partial
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from . import _layouts, _rows, _sparse
from ._layouts import Layout, RowBlock, matmul
from ._mesh import constrain, partition_specs
from ._types import (
    Bias,
    Evaluation,
    Features,
    LossSpec,
    Plan,
    RowValues,
    Scores,
    Want,
    Weights,
    accumulation_dtype,
)

# Block-size and accumulation rules (see choose_chunks, weight_grad_dtype), read from data:
# ``_rules.json`` names the measurements (benchmarks/results/) behind each number.
RULES = json.loads(resources.files(__package__).joinpath("_rules.json").read_text())
DEFAULT_CHUNK_BYTES = RULES["cpu"]["chunk_bytes"]  # memory budget for one f32 block of scores
CACHE_BLOCK_BYTES = RULES["cpu"]["cache_block_bytes"]
MIN_EFFICIENT_ROWS = RULES["cpu"]["min_efficient_rows"]
WORKING_SET_BYTES = RULES["cpu"]["working_set_bytes"]  # a dense chunk's X rows and scores
GPU_CHUNK_BYTES = RULES["gpu"]["chunk_bytes"]  # on an accelerator a GEMM needs ~1024 rows
# A block of scores up to this size keeps its exponentials exp(z − m) for the gradient (one
# pass of exp instead of two, at the cost of a second block of scratch); larger blocks (an LM
# head's) recompute them. See ``keeps_exponentials``.
KEEP_EXPONENTIALS_BYTES = RULES["keep_exponentials_bytes"]
GPU_ROWS = RULES["gpu"]["rows"]
FLOAT32_WEIGHT_GRAD_BYTES = RULES["gpu"]["float32_weight_grad_bytes"]
WEIGHT_GRAD_ACCUMULATIONS = ("auto", "float32", "input")


def choose_chunks(n: int, k: int, budget_bytes: int | None = None,
                  platform: str = "cpu", *, d: int = 0, itemsize: int = 4) -> tuple[int, int | None]:
    """(rows per chunk, classes per block or None) for f32 score blocks within a budget.

    CPU: a block of ``rows × K`` scores should fill a cache-sized block
    (``cache_block_bytes``; small K stays in cache), and with ``d`` > 0 (a dense X of
    ``itemsize``-byte values) the chunk's rows × (D + K) values should fit ``working_set_bytes``,
    so that the X rows a chunk reads stay in cache for its second product (the scores rule
    alone chose chunks several times slower: ``benchmarks/results/chunk-rows-cpu.md``). Either
    way at least ``min_efficient_rows`` (fewer rows make the matrix products inefficient),
    never more than ``budget_bytes`` (default ``chunk_bytes``) of scores; powers of two, at
    least 64, at most ``n`` (``benchmarks/results/hot-cpu.md``). GPU: ``rows`` rows within the
    GPU's ``chunk_bytes`` (fewer rows ran further from the matmul floor, more held more
    scratch for little gain: ``benchmarks/results/gpu/``). The numbers, and the commands that
    measured them, live in ``_rules.json``. Classes are split only
    when even 64 rows of all K exceed the budget: then 256 rows by as many classes as fit; class
    blocks compute the scores twice, so they are the memory fallback, not the default.
    """
    if platform == "cpu":
        budget = DEFAULT_CHUNK_BYTES if budget_bytes is None else budget_bytes
        cache_rows = _pow2_floor(CACHE_BLOCK_BYTES // (4 * k))
        if d > 0:
            cache_rows = min(cache_rows, _pow2_floor(WORKING_SET_BYTES // ((d + k) * itemsize)))
        target_rows = max(cache_rows, MIN_EFFICIENT_ROWS)
    else:
        budget = GPU_CHUNK_BYTES if budget_bytes is None else budget_bytes
        target_rows = GPU_ROWS
    budget_rows = _pow2_floor(budget // (4 * k))
    rows = min(n, max(64, min(target_rows, budget_rows)))
    if 64 * k * 4 <= budget:
        return rows, None
    rows = min(n, 256)
    classes = max(128, _pow2_floor(budget // (4 * rows)))
    return rows, min(classes, k)


def _pow2_floor(value: int) -> int:
    return 2 ** int(math.log2(max(value, 1)))


def feature_blocks(d: int, rows: int, platform: str) -> int:
    """Blocks of features for the product Xᵀ·dZ of one chunk (see :class:`Plan`).

    XLA on CPU forms ``dW + xᵀ·dz`` as a separate (D, K) product before the addition, a
    temporary as large as dW; in blocks of at most rows/2 features it stays at most half a
    score block (``benchmarks/results/memory-cpu.md``). XLA on GPU folds the addition into the
    GEMM (β = 1), so there the product is formed whole.
    """
    if platform != "cpu":
        return 1
    return max(1, min(d, -(-2 * d // max(rows, 1))))


def weight_grad_dtype(dtype, d: int, k: int, accumulation: str = "auto") -> str | None:
    """The dtype dW accumulates in over row chunks (None: the accumulation dtype).

    Only 16-bit inputs have a choice. "float32" always; "input" accumulates in the inputs'
    dtype (as Liger-Kernel does); "auto" keeps float32 while the (D, K) accumulator fits
    ``FLOAT32_WEIGHT_GRAD_BYTES`` (``_rules.json``) and otherwise halves it: at an LM head's
    (4096, 128256) the float32 accumulator alone is 2 GiB, most of the op's scratch.
    """
    if accumulation not in WEIGHT_GRAD_ACCUMULATIONS:
        raise ValueError("`weight_grad_accumulation` must be one of "
                         f"{', '.join(map(repr, WEIGHT_GRAD_ACCUMULATIONS))}; got {accumulation!r}.")
    dtype = jnp.dtype(dtype)
    if accumulation_dtype(dtype) == dtype or accumulation == "float32":
        return None
    if accumulation == "input" or 4 * d * k > FLOAT32_WEIGHT_GRAD_BYTES:
        return dtype.name
    return None


def recompute_backward(backward: str, platform: str | None = None) -> bool:
    """Whether a scalar loss uses the recompute backward: "fused"/"recompute" as asked, "auto"
    by the platform's rule (``_rules.json``)."""
    if backward != "auto":
        return backward == "recompute"
    platform = platform or jax.devices()[0].platform
    return RULES["cpu" if platform == "cpu" else "gpu"]["backward"] == "recompute"


def sparse_chunk_rows(indptr, k: int, rows: int, platform: str = "cpu") -> int:
    """Rows per chunk for sparse X: the dense rule's rows, halved while the chunk with the most
    stored entries would gather more than the block budget (entries × K f32 values)."""
    budget = DEFAULT_CHUNK_BYTES if platform == "cpu" else GPU_CHUNK_BYTES
    while rows > 64 and _sparse.max_chunk_entries(indptr, rows) * k * 4 > budget:
        rows //= 2
    return rows


def make_plan(n: int, d: int, k: int, *, chunk_rows: int | None = None,
              class_chunk: int | None = None, mesh=None, data_axis: str | None = None,
              class_axis: str | None = None, grad_dtype: str | None = None,
              recompute: bool = False, sparse_indptr=None, itemsize: int = 4) -> Plan:
    """The :class:`Plan` for N rows, D features and K classes: explicit sizes win, else
    :func:`choose_chunks` on the block one device holds; no class blocks along a class-sharded
    mesh axis. ``grad_dtype``, ``recompute``: see :class:`Plan`. ``sparse_indptr``: the CSR row
    pointers of a sparse X (rows per chunk by :func:`sparse_chunk_rows`; no class blocks).
    ``itemsize``: bytes per value of a dense X (its rows count in the CPU's cache rule)."""
    if mesh is not None:
        n //= mesh.shape[data_axis] if data_axis else 1
        k //= mesh.shape[class_axis] if class_axis else 1
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    dense_d = 0 if sparse_indptr is not None else d
    rows, classes = choose_chunks(n, k, platform=platform, d=dense_d, itemsize=itemsize)
    if chunk_rows is not None:
        rows, classes = min(chunk_rows, n), class_chunk
    elif class_chunk is not None:
        classes = class_chunk
    if class_axis is not None or (classes is not None and classes >= k):
        classes = None
    if sparse_indptr is not None:
        if chunk_rows is None:
            rows = sparse_chunk_rows(sparse_indptr, k, rows, platform)
        return Plan(rows, None, 1, mesh, data_axis, class_axis, grad_dtype, recompute)
    return Plan(rows, classes, feature_blocks(d, rows, platform), mesh, data_axis, class_axis,
                grad_dtype, recompute)


def scores(W: Weights, b: Bias | None, X: Features | RowBlock) -> Scores:
    """Z = XW + b in the accumulation dtype, shape (N, K); X dense or a row block (``_layouts``)."""
    z = _layouts.scores(X, W)
    return z if b is None else z + b.astype(z.dtype)


class _Head(NamedTuple):
    """The traced values every block reads."""

    W: jax.Array
    b: jax.Array | None
    eps: jax.Array
    zeta: jax.Array


class _Sums(NamedTuple):
    """Accumulated over row chunks."""

    value: jax.Array
    gW: jax.Array | None
    gb: jax.Array | None


class _RowOut(NamedTuple):
    """Written per row chunk."""

    gX: jax.Array | None
    g_labels: jax.Array | None
    loss: jax.Array | None
    lse: jax.Array | None
    predicted: jax.Array | None


class _Static(NamedTuple):
    """The static context of a block: what to compute and where its classes sit."""

    spec: LossSpec
    want: Want
    n_classes: int  # K over all devices
    class_start: object  # first class id of the block this device holds (traced on a mesh)
    class_axis: str | None
    class_chunk: int | None
    feature_blocks: int


def _add_value(sums: _Sums, coef, loss) -> _Sums:
    # Rows with coefficient 0 (ignored, padded) leave the sum even when their loss is inf/NaN.
    return sums._replace(value=sums.value + jnp.sum(jnp.where(coef != 0, coef * loss, 0)))


def keeps_exponentials(z: jax.Array) -> bool:
    """Whether a block of scores keeps exp(z − m) for its probabilities (static: by its size).

    Recomputing the exponentials costs a second pass of exp over the block; keeping them costs a
    second block of scratch. On a CPU the exps weigh as much as the products at small D, so
    one pass was faster on digits and no slower at the larger fit shapes
    (``benchmarks/results/keep-exponentials-cpu.md``). CPU blocks are cache-sized
    (``choose_chunks``), so they keep them; a GPU's LM-head blocks (``_rules.json``) do not.
    """
    return z.size * z.dtype.itemsize <= KEEP_EXPONENTIALS_BYTES


def _one_block(sums: _Sums, x, y, coef, lse_in, head: _Head, st: _Static) -> tuple[_Sums, _RowOut]:
    """One chunk of rows with all the device's classes at once."""
    spec, want = st.spec, st.want
    need_dz = want.grad_W or want.grad_X
    z = _rows.soft_cap(scores(head.W, head.b, x), spec.softcap)
    loss = predicted = m = None
    if st.class_axis and (lse_in is None or want.predictions):  # the row maximum over devices
        m = lax.pmax(_rows.block_max(z), st.class_axis)
    if want.predictions:
        top, predicted = _rows.block_argmax(z, st.class_start)
        if st.class_axis:  # the first device holding the row's maximum names the class
            predicted = lax.pmin(jnp.where(top == m, predicted, st.n_classes), st.class_axis)
    if lse_in is None:
        kept = None
        if need_dz and keeps_exponentials(z):
            m = _rows.block_max(z) if m is None else m
            kept = _rows.shifted_exponentials(z, m)
        stats = _rows.block_stats(z, y, st.class_start, spec, m, kept)
        if st.class_axis:
            stats = _rows.across_devices(stats, st.class_axis)
        loss, lse = _rows.finish(stats, spec, head.eps, head.zeta, st.n_classes)
        sums = _add_value(sums, coef, loss)
        if not need_dz:
            p = None
        elif kept is not None:
            p = _rows.kept_probabilities(kept, stats)
        else:
            p = _rows.probabilities(z, stats)
        t_sum = _rows.stats_target_sum(stats, spec, head.eps)
    else:
        lse = lse_in
        p = jnp.exp(z - lse[:, None]) if need_dz else None
        t_sum = _rows.target_sum(y, spec, head.eps, z.dtype, st.class_axis) if need_dz else None
    gX = g_labels = None
    if need_dz:
        scale = _rows.probability_scale(lse, t_sum, spec, head.zeta)
        t = _rows.targets(y, spec, head.eps, st.n_classes, st.class_start, z.shape[1], z.dtype)
        dz = _rows.uncap_gradient(_rows.score_gradient(p, t, coef, scale), z, spec.softcap)
        dz_in = dz.astype(x.dtype)  # 16-bit inputs: the products still accumulate in f32
        if want.grad_W:
            sums = sums._replace(gW=_layouts.add_transposed_product(sums.gW, x, dz_in, st.feature_blocks))
            if sums.gb is not None:
                sums = sums._replace(gb=sums.gb + jnp.sum(dz, axis=0))
        if want.grad_X:
            gX = matmul(dz_in, head.W.T)
    if want.grad_labels:
        g_labels = _rows.label_gradient(z, lse, coef, spec, head.eps)
    rows = _RowOut(gX, g_labels, loss if want.rows else None, lse if want.rows else None, predicted)
    return sums, rows


def _class_blocks(sums: _Sums, x, y, coef, lse_in, head: _Head, st: _Static) -> tuple[_Sums, _RowOut]:
    """One chunk of rows, classes in blocks of ``class_chunk``: pass 1 merges the blocks' row
    statistics (online log-sum-exp), pass 2 recomputes each block's scores for its gradient.
    Only (rows, class_chunk) scores are ever live."""
    spec, want = st.spec, st.want
    n, k, width = x.shape[0], head.W.shape[1], st.class_chunk
    n_full, rem = divmod(k, width)
    acc = accumulation_dtype(x.dtype)

    def block(start, size):
        w = lax.dynamic_slice_in_dim(head.W, start, size, axis=1)
        z = _layouts.scores(x, w)
        if head.b is not None:
            z = z + lax.dynamic_slice_in_dim(head.b, start, size).astype(z.dtype)
        z = _rows.soft_cap(z, spec.softcap)
        yb = lax.dynamic_slice_in_dim(y, start, size, axis=1) if spec.soft else y
        return z, w, yb

    def over_classes(body, init, first=0):
        carry = lax.fori_loop(first, n_full, lambda j, c: body(j * width, width, c), init)
        return body(n_full * width, rem, carry) if rem else carry

    loss = predicted = None
    if lse_in is None:
        def merge_block(start, size, carry):
            stats, arg = carry
            z, _, yb = block(start, size)
            if arg is not None:
                arg = _rows.merge_argmax(arg, _rows.block_argmax(z, start))
            return _rows.merge(stats, _rows.block_stats(z, yb, start, spec)), arg

        z0, _, y0 = block(0, width)
        first = (_rows.block_stats(z0, y0, 0, spec),
                 _rows.block_argmax(z0, 0) if want.predictions else None)
        stats, arg = over_classes(merge_block, first, first=1)
        predicted = None if arg is None else arg[1]
        loss, lse = _rows.finish(stats, spec, head.eps, head.zeta, k)
        sums = _add_value(sums, coef, loss)
    else:
        lse = lse_in
    gX = g_labels = None
    need_dz = want.grad_W or want.grad_X
    if need_dz or want.grad_labels:
        scale = _rows.probability_scale(lse, _rows.target_sum(y, spec, head.eps, acc), spec, head.zeta)

        def grads(start, size, carry):
            s, gX, gY = carry
            z, w, yb = block(start, size)
            if need_dz:
                t = _rows.targets(yb, spec, head.eps, k, start, size, acc)
                dz = _rows.score_gradient(jnp.exp(z - lse[:, None]), t, coef, scale)
                dz = _rows.uncap_gradient(dz, z, spec.softcap)
                dz_in = dz.astype(x.dtype)
                if want.grad_W:
                    part = _layouts.add_transposed_product(lax.dynamic_slice_in_dim(s.gW, start, size, axis=1),
                                                           x, dz_in, 1)
                    s = s._replace(gW=lax.dynamic_update_slice_in_dim(s.gW, part, start, axis=1))
                    if s.gb is not None:
                        part = lax.dynamic_slice_in_dim(s.gb, start, size) + jnp.sum(dz, axis=0)
                        s = s._replace(gb=lax.dynamic_update_slice_in_dim(s.gb, part, start, 0))
                if want.grad_X:
                    gX = gX + matmul(dz_in, w.T)
            if want.grad_labels:
                gY = lax.dynamic_update_slice_in_dim(
                    gY, _rows.label_gradient(z, lse, coef, spec, head.eps), start, axis=1)
            return s, gX, gY

        gX0 = jnp.zeros((n, x.shape[1]), acc) if want.grad_X else None
        gY0 = jnp.zeros((n, k), acc) if want.grad_labels else None
        sums, gX, g_labels = over_classes(grads, (sums, gX0, gY0))
    rows = _RowOut(gX, g_labels, loss if want.rows else None, lse if want.rows else None, predicted)
    return sums, rows


def evaluate(W: Weights, b: Bias | None, X: Features | Layout, labels, coef: RowValues, eps, zeta,
             spec: LossSpec, plan: Plan, want: Want, lse: RowValues | None = None) -> Evaluation:
    """V = Σₙ cₙℓₙ and the gradients ``want`` asks for, in the accumulation dtype.

    Args:
      W (D, K), b (K,) or None, X (N, D): the linear head. labels: (N,) ids or (N, K) rows.
      coef: (N,) row coefficients cₙ. eps, zeta: label smoothing and z-loss weights (used when
        ``spec`` says they are present). lse: (N,) log-sum-exp when already known (a recompute
        backward): the loss is then not evaluated and ``value`` is 0.
    Runs inside the caller's ``jit``; on ``plan.mesh`` through ``shard_map``.
    """
    if plan.mesh is None:
        return _evaluate_local(W, b, X, labels, coef, eps, zeta, spec, plan, want, lse, 0, None)
    return _evaluate_sharded(W, b, X, labels, coef, eps, zeta, spec, plan, want, lse)


def _evaluate_local(W, b, X, labels, coef, eps, zeta, spec, plan, want, lse, class_start,
                    class_axis) -> Evaluation:
    n, d = X.shape
    k_local = W.shape[1]
    n_classes = k_local * (lax.axis_size(class_axis) if class_axis else 1)
    acc = accumulation_dtype(X.dtype)
    head = _Head(W, b, jnp.asarray(eps, acc), jnp.asarray(zeta, acc))
    st = _Static(spec, want, n_classes, class_start, class_axis, plan.class_chunk,
                 plan.feature_blocks)
    block = _one_block if plan.class_chunk is None else _class_blocks
    # dW starts as W·0, not a broadcast zero: XLA merges a program's identical zero arrays into
    # one buffer, copied into each pass's accumulator and kept alive until the last such pass,
    # so a Newton step held one more D×K array through its CG solve (W·0 is not folded for
    # floats; a finite W gives exact zeros).
    sums = _Sums(jnp.zeros((), acc),
                 (W * 0).astype(plan.weight_grad_dtype or acc) if want.grad_W else None,
                 jnp.zeros((k_local,), acc) if want.grad_W and b is not None else None)
    c = max(1, min(plan.chunk_rows, n))
    if c == n:
        sums, rows = block(sums, _layouts.row_block(X, 0, n), labels, coef, lse, head, st)
    else:
        # Row outputs are written in place into (N, ...) buffers.
        rows = _RowOut(jnp.zeros((n, d), acc) if want.grad_X else None,
                       jnp.zeros((n, k_local), acc) if want.grad_labels else None,
                       jnp.zeros((n,), acc) if want.rows else None,
                       jnp.zeros((n,), acc) if want.rows else None,
                       jnp.zeros((n,), jnp.int32) if want.predictions else None)

        def step(carry, start, x):
            sums, rows = carry
            y, cf, ls = (None if a is None else lax.dynamic_slice_in_dim(a, start, x.shape[0], axis=0)
                         for a in (labels, coef, lse))
            sums, out = block(sums, x, y, cf, ls, head, st)
            rows = jax.tree_util.tree_map(
                lambda buf, part: lax.dynamic_update_slice_in_dim(buf, part, start, 0), rows, out)
            return sums, rows

        sums, rows = _layouts.over_row_blocks(X, step, (sums, rows), rows=c)
    return Evaluation(sums.value, sums.gW, sums.gb, rows.gX, rows.g_labels, rows.loss, rows.lse,
                      rows.predicted)


def _all_rows(W: Weights, b: Bias | None, X, transform) -> Scores:
    """``transform(XW + b)`` for every row, (N, K); a chunked X chunk by chunk, so that the
    (N, K) result is the only N×K array."""
    if not _layouts.chunked(X):
        return transform(scores(W, b, X))

    def body(out, start, chunk):
        return lax.dynamic_update_slice_in_dim(out, transform(scores(W, b, chunk).astype(out.dtype)), start, 0)

    return _layouts.over_row_blocks(X, body, jnp.zeros((X.shape[0], W.shape[1]), accumulation_dtype(X.dtype)))


def all_scores(W: Weights, b: Bias | None, X) -> Scores:
    """Z = XW + b for every row, (N, K): for callers that keep all N×K values anyway."""
    return _all_rows(W, b, X, lambda z: z)


def all_probabilities(W: Weights, b: Bias | None, X) -> Scores:
    """softmax(XW + b) for every row, (N, K), without the N×K scores beside them."""
    return _all_rows(W, b, X, partial(jax.nn.softmax, axis=-1))


def all_predictions(W: Weights, b: Bias | None, X) -> jax.Array:
    """argmax (XW + b) for every row, (N,) in JAX's default integer dtype (as ``jnp.argmax``); a
    chunked X chunk by chunk, so that no N×K scores exist at once."""
    if not _layouts.chunked(X):
        return jnp.argmax(scores(W, b, X), axis=-1)

    def body(ids, start, chunk):
        return lax.dynamic_update_slice_in_dim(ids, jnp.argmax(scores(W, b, chunk), axis=-1), start, 0)

    return _layouts.over_row_blocks(X, body, jnp.zeros((X.shape[0],), jax.dtypes.canonicalize_dtype(jnp.int64)))


def cached_hessian_vector(P: jax.Array, r: jax.Array, X, VW: Weights,
                          Vb: Bias | None) -> tuple[jax.Array, jax.Array | None]:
    """H·V of the loss from kept probabilities P (N, K) and row factors r (N,) (``docs/
    derivation.md`` §8): two products per chunk instead of three; over a sparse X chunk by
    chunk, so no other N×K array is formed."""

    def body(carry, start, chunk):
        HW, Hb = carry
        size = chunk.shape[0]
        p, rows = (lax.dynamic_slice_in_dim(a, start, size, axis=0) for a in (P, r))
        a = scores(VW, Vb, chunk)
        h = p * (a - jnp.sum(p * a, axis=-1, keepdims=True))
        h = jnp.where(rows[:, None] != 0, rows[:, None] * h, 0)
        HW = _layouts.add_transposed_product(HW, chunk, h.astype(chunk.dtype), 1)
        return HW, None if Hb is None else Hb + jnp.sum(h, axis=0)

    init = (jnp.zeros(VW.shape, P.dtype), None if Vb is None else jnp.zeros(Vb.shape, P.dtype))
    return _layouts.over_row_blocks(X, body, init)


def hessian_diagonal(P: jax.Array, r: jax.Array, X) -> tuple[jax.Array, jax.Array]:
    """The diagonal of the loss's Hessian from kept P (N, K) and row factors r (N,)
    (``docs/derivation.md`` §8 with V a unit direction): Σₙ rₙ xₙⱼ² pₙₖ(1 − pₙₖ) for W (D, K),
    Σₙ rₙ pₙₖ(1 − pₙₖ) for b (K,). One product of the squared features per chunk."""

    def body(carry, start, chunk):
        dW, db = carry
        size = chunk.shape[0]
        p, rows = (lax.dynamic_slice_in_dim(a, start, size, axis=0) for a in (P, r))
        h = jnp.where(rows[:, None] != 0, rows[:, None] * p * (1 - p), 0)
        dW = _layouts.add_transposed_product(dW, _layouts.squares(chunk), h.astype(chunk.dtype), 1)
        return dW, db + jnp.sum(h, axis=0)

    init = (jnp.zeros((X.shape[1], P.shape[1]), P.dtype), jnp.zeros(P.shape[1], P.dtype))
    return _layouts.over_row_blocks(X, body, init)


def _evaluate_sharded(W, b, X, labels, coef, eps, zeta, spec, plan, want, lse) -> Evaluation:
    d_axis, c_axis = plan.data_axis, plan.class_axis
    layout = partition_specs(d_axis, c_axis, spec.soft)
    args = {"W": W, "b": b, "X": X, "labels": labels, "coef": coef, "lse": lse,
            "eps": jnp.asarray(eps), "zeta": jnp.asarray(zeta)}
    per_device = _layouts.per_device(X)  # laid out per device already (leading block axis)
    args = {name: value if (name == "X" and per_device) else constrain(value, plan.mesh, layout[name])
            for name, value in args.items() if value is not None}
    in_specs = {name: layout[name] for name in args}
    if per_device:
        in_specs["X"] = jax.tree_util.tree_map(lambda _: P(d_axis), X)

    def local(a):
        start = lax.axis_index(c_axis) * a["W"].shape[1] if c_axis else 0
        x = a["X"].local() if per_device else a["X"]
        ev = _evaluate_local(a["W"], a.get("b"), x, a["labels"], a["coef"], a["eps"],
                             a["zeta"], spec, plan, want, a.get("lse"), start, c_axis)
        if d_axis:  # the rows' sums over the devices holding the other rows
            ev = ev._replace(value=lax.psum(ev.value, d_axis),
                             gW=None if ev.gW is None else lax.psum(ev.gW, d_axis),
                             gb=None if ev.gb is None else lax.psum(ev.gb, d_axis))
        if c_axis and ev.gX is not None:  # dX = Σ over class blocks of dZ_block W_blockᵀ
            ev = ev._replace(gX=lax.psum(ev.gX, c_axis))
        return ev

    rows = P(d_axis) if want.rows else None
    out_specs = Evaluation(
        P(), P(None, c_axis) if want.grad_W else None,
        P(c_axis) if want.grad_W and b is not None else None,
        P(d_axis, None) if want.grad_X else None, P(d_axis, c_axis) if want.grad_labels else None,
        rows, rows, P(d_axis) if want.predictions else None)
    # check_vma=False: the row loop's zero-initialised carry is device-invariant while its body
    # output varies along the mesh axes; every cross-device value is reduced explicitly above.
    return jax.shard_map(local, mesh=plan.mesh, in_specs=(in_specs,), out_specs=out_specs,
                         check_vma=False)(args)


def hessian_vector(W: Weights, b: Bias | None, X: Features | Layout, labels, coef: RowValues, VW: Weights,
                   Vb: Bias | None, eps, zeta, spec: LossSpec, plan: Plan) -> tuple[jax.Array, jax.Array | None]:
    r"""The Hessian of V = Σₙ cₙℓₙ applied to a direction (V_W, V_b) (``docs/derivation.md`` §8).

    With the scores' directional change :math:`A = XV_W + V_b`, per row
    :math:`\partial^2\ell/\partial z^2\,a = \sigma\,(\hat y\odot a - \hat y\,(\hat y^\top a))
    + 2\zeta\,\hat y(\hat y^\top a)` where :math:`\sigma = \sum_k t_k + 2\zeta\,\mathrm{lse}`;
    then :math:`H_W = X^\top (c\odot \partial^2\ell\,A)` and :math:`H_b = \sum_n c_n\,
    \partial^2\ell_n a_n`. Rows go in chunks of ``plan.chunk_rows`` with all classes of a chunk
    at once (the class-block and mesh paths are the gradient's, not the HVP's), so the scratch
    is two (rows, K) blocks. Returns (H_W (D, K), H_b (K,) or None) in the accumulation dtype.
    """
    n, d = X.shape
    k = W.shape[1]
    acc = accumulation_dtype(X.dtype)
    eps, zeta = jnp.asarray(eps, acc), jnp.asarray(zeta, acc)

    cap = spec.softcap

    def block(carry, x, y, c):
        HW, Hb = carry
        z = _rows.soft_cap(scores(W, b, x), cap)
        m = _rows.block_max(z)
        kept = _rows.shifted_exponentials(z, m) if keeps_exponentials(z) else None
        stats = _rows.block_stats(z, y, 0, spec, m, kept)
        _, lse = _rows.finish(stats, spec, eps, zeta, k)
        p = _rows.probabilities(z, stats) if kept is None else _rows.kept_probabilities(kept, stats)
        a = scores(VW, Vb, x)
        if cap is not None:  # the direction of the capped scores: s'(u)·a
            slope = _rows.cap_slope(z, cap)
            a = slope * a
        pa = jnp.sum(p * a, axis=-1, keepdims=True)
        sigma = _rows.probability_scale(lse, _rows.stats_target_sum(stats, spec, eps), spec, zeta)
        h = p * (a - pa)
        if sigma is not None:
            h = sigma[:, None] * h
        if spec.z_loss:
            h = h + 2 * zeta * p * pa
        if cap is not None:
            # ∂²ℓ/∂u² a = s'·(∂²ℓ/∂s²)(s'·a) + (∂ℓ/∂s)·s''·a, with s'' = −2(s/c)s'/c and
            # s''·a = −2(s/c)(s'·a)/c: a (already s'·a here) needs no second copy.
            t = _rows.targets(y, spec, eps, k, 0, k, z.dtype)
            g = _rows.score_gradient(p, t, jnp.ones_like(c), sigma)
            h = slope * h - 2 * g * (z / cap) * a / cap
        h = jnp.where(c[:, None] != 0, c[:, None] * h, 0)  # ignored rows leave even when non-finite
        HW = _layouts.add_transposed_product(HW, x, h.astype(x.dtype), plan.feature_blocks)
        return HW, None if Hb is None else Hb + jnp.sum(h, axis=0)

    carry = (jnp.zeros((d, k), acc), None if b is None else jnp.zeros((k,), acc))

    def step(carry, start, x):
        y, c = (lax.dynamic_slice_in_dim(a, start, x.shape[0], axis=0) for a in (labels, coef))
        return block(carry, x, y, c)

    return _layouts.over_row_blocks(X, step, carry, rows=max(1, min(plan.chunk_rows, n)))
