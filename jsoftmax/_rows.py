r"""The per-row mathematics, written once (``docs/derivation.md`` §3, §5, §6).

For one row with scores :math:`z \in \mathbb{R}^K`, targets :math:`t = (1-\varepsilon)y +
\varepsilon/K` and z-loss weight :math:`\zeta`:

.. math::

    \ell = \mathrm{lse}(z)\textstyle\sum_k t_k - t^\top z + \zeta\,\mathrm{lse}(z)^2, \qquad
    \partial\ell/\partial z = \hat y\,\big(\textstyle\sum_k t_k + 2\zeta\,\mathrm{lse}(z)\big) - t,
    \qquad \partial\ell/\partial y = -(1-\varepsilon)\log\hat y.

The loss is accumulated relative to a reference ``m`` (the row maximum): with
:math:`z - m` exact near the top, :math:`\ell = \log s \sum_k t_k - t^\top(z - m)` with
:math:`s = \sum_k e^{z_k - m}` does not cancel the way ``lse - z_y`` does at large scores.

Scores arrive in blocks of classes (all K at once, a class block of an online log-sum-exp, or
the columns one device holds). :class:`RowStats` are a block's partial sums; :func:`merge`
combines two blocks, :func:`across_devices` completes them over a mesh axis, :func:`finish`
turns them into the loss and log-sum-exp. One set of formulas serves every path.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from ._types import LossSpec

RowVector = Float[Array, " n"]
Block = Float[Array, "n width"]


class RowStats(NamedTuple):
    """Partial sums over a block of classes, each (n,), relative to the reference ``m``."""

    m: jax.Array  # reference: the block maximum (-inf when every score is -inf)
    s: jax.Array  # Σ exp(z - m)
    tz: jax.Array  # Σ y (z - m)   (unsmoothed targets)
    ysum: jax.Array  # Σ y over the block (for class ids: 1 where the label lies in the block)
    zsum: jax.Array | None  # Σ (z - m), only with label smoothing
    count: jax.Array | None  # classes in the block, only with label smoothing


def _safe(m: jax.Array) -> jax.Array:
    """A finite reference: a row whose scores are all -inf is shifted by 0, not by -inf."""
    return jnp.where(jnp.isneginf(m), jnp.zeros_like(m), m)


def block_max(z: Block) -> jax.Array:
    """The rows' maximum score (n,), the reference of :func:`block_stats` (no gradient)."""
    return lax.stop_gradient(jnp.max(z, axis=-1))


def shifted_exponentials(z: Block, m: jax.Array) -> Block:
    """exp(z − m) of a block, to be kept: :func:`block_stats` then sums it and
    :func:`kept_probabilities` scales it, one pass of exponentials instead of two."""
    return jnp.exp(z - _safe(m)[:, None])


def block_stats(z: Block, labels, start, spec: LossSpec, m: jax.Array | None = None,
                exponentials: Block | None = None) -> RowStats:
    """Partial sums of one block of classes ``[start, start + width)``.

    ``labels`` are the rows' class ids (n,) or their probability columns of this block
    (n, width). ``m`` (n,): a reference shared with other devices; default the block maximum.
    ``exponentials``: :func:`shifted_exponentials` of ``z`` and ``m`` when the caller keeps them.
    """
    if m is None:
        m = block_max(z)
    ref = _safe(m)
    # Without kept exponentials every use of z - m below is fused into a reduction or taken
    # after a gather, so no second (n, width) buffer is materialised next to z.
    s = jnp.sum(jnp.exp(z - ref[:, None]) if exponentials is None else exponentials, axis=-1)
    width = z.shape[-1]
    if spec.soft:
        y = labels.astype(z.dtype)
        ysum, tz = jnp.sum(y, axis=-1), jnp.sum(y * (z - ref[:, None]), axis=-1)
    else:
        # A gather of n scores, not a one-hot product: O(n) work and memory.
        local = labels - start
        inside = (local >= 0) & (local < width)
        picked = jnp.take_along_axis(z, jnp.clip(local, 0, width - 1)[:, None], axis=-1)[:, 0]
        tz, ysum = jnp.where(inside, picked - ref, 0), inside.astype(z.dtype)
    zsum = count = None
    if spec.smoothing:
        zsum, count = jnp.sum(z - ref[:, None], axis=-1), jnp.asarray(width, z.dtype)
    return RowStats(m, s, tz, ysum, zsum, count)


def soft_cap(z: Block, cap: float | None) -> Block:
    """Capped scores c·tanh(z/c) (``docs/derivation.md`` §10); ``z`` itself when ``cap`` is None."""
    return z if cap is None else cap * jnp.tanh(z / cap)


def cap_slope(capped: Block, cap: float) -> Block:
    """d(c·tanh(u/c))/du = 1 − tanh²(u/c) = 1 − (s/c)², from the capped scores s alone (the raw
    scores need not be kept)."""
    ratio = capped / cap
    return 1 - ratio * ratio


def uncap_gradient(dz: Block, capped: Block, cap: float | None) -> Block:
    """∂/∂(raw scores) from ∂/∂(capped scores): the chain rule through the cap, elementwise."""
    return dz if cap is None else dz * cap_slope(capped, cap)


def block_argmax(z: Block, start) -> tuple[RowVector, jax.Array]:
    """(row maximum, class id of its first occurrence) of a block of classes starting at ``start``."""
    # max, then the lowest index that attains it: two plain reductions that fuse with the
    # log-sum-exp's own maximum (jnp.argmax's variadic reduction ran at 1.7x the op on a CPU).
    top = jnp.max(z, axis=-1)
    width = z.shape[-1]
    ids = lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1)
    return top, jnp.min(jnp.where(z == top[:, None], ids, width), axis=-1) + start


def merge_argmax(a: tuple[RowVector, jax.Array], b: tuple[RowVector, jax.Array]):
    """The arg-max over two blocks; ``a`` holds the lower class ids, so a tie keeps ``a``'s
    (the first occurrence, as ``jnp.argmax``)."""
    take_b = b[0] > a[0]
    return jnp.where(take_b, b[0], a[0]), jnp.where(take_b, b[1], a[1])


def probabilities(z: Block, st: RowStats) -> Block:
    """ŷ = exp((z − m) − log s) of a block from the completed sums.

    Recomputed from z rather than kept from :func:`block_stats`: the exponentials are cheap next
    to the matrix products, and not keeping them lets the gradient overwrite the scores in place
    (one block of scratch instead of two).
    """
    # The barrier keeps XLA from merging this z - m with the one in block_stats into a single
    # (n, width) array that both would then have to keep alive.
    ref = lax.optimization_barrier(_safe(st.m))
    return jnp.exp((z - ref[:, None]) - jnp.log(st.s)[:, None])


def kept_probabilities(exponentials: Block, st: RowStats) -> Block:
    """ŷ = exp(z − m) / s from :func:`shifted_exponentials` of the block and its completed sums."""
    return exponentials * (1 / st.s)[:, None]


def _rebase(st: RowStats, m_new: jax.Array) -> RowStats:
    """The same sums relative to ``m_new`` (a block whose reference is -inf holds only zeros
    and infinities, which need no shift)."""
    shift = jnp.where(jnp.isneginf(st.m), 0, _safe(st.m) - _safe(m_new))
    zsum = None if st.zsum is None else st.zsum + st.count * shift
    return RowStats(m_new, st.s * jnp.exp(shift), st.tz + st.ysum * shift, st.ysum, zsum, st.count)


def merge(a: RowStats, b: RowStats) -> RowStats:
    """Sums over the union of two blocks of classes (the online log-sum-exp step)."""
    m = jnp.maximum(a.m, b.m)
    a, b = _rebase(a, m), _rebase(b, m)
    return jax.tree_util.tree_map(lambda u, v: u + v, a._replace(m=jnp.zeros_like(m)), b)._replace(m=m)


def across_devices(st: RowStats, axis: str) -> RowStats:
    """Complete sums taken relative to a shared reference over mesh axis ``axis`` (psum)."""
    return RowStats(st.m, *(None if v is None else lax.psum(v, axis) for v in st[1:]))


def target_sum(labels, spec: LossSpec, eps, dtype, axis: str | None = None) -> jax.Array | None:
    """Σₖ tₖ per row: None for class ids (one-hot rows sum to one), else (1-ε)Σy + ε.

    ``axis``: the probability columns are split over this mesh axis; their sums are completed.
    """
    if not spec.soft:
        return None
    y_sum = jnp.sum(labels.astype(dtype), axis=-1)
    return _smoothed(lax.psum(y_sum, axis) if axis else y_sum, spec, eps)


def _smoothed(y_sum, spec: LossSpec, eps):
    return (1 - eps) * y_sum + eps if spec.smoothing else y_sum


def stats_target_sum(st: RowStats, spec: LossSpec, eps) -> jax.Array | None:
    """Σₖ tₖ from completed sums (no second pass over probability rows); None for class ids."""
    return _smoothed(st.ysum, spec, eps) if spec.soft else None


def finish(st: RowStats, spec: LossSpec, eps, zeta, n_classes: int) -> tuple[RowVector, RowVector]:
    """(ℓ, lse) per row from the sums over all K classes."""
    log_s = jnp.log(st.s)
    lse = _safe(st.m) + log_s
    t_sum = _smoothed(st.ysum, spec, eps) if spec.soft else 1
    t_z = st.tz
    if spec.smoothing:
        t_z = (1 - eps) * st.tz + eps * st.zsum / n_classes
    loss = log_s * t_sum - t_z
    if spec.z_loss:
        loss = loss + zeta * lse**2
    return loss, lse


def probability_scale(lse: RowVector, t_sum, spec: LossSpec, zeta):
    """The factor that multiplies ŷ in ∂ℓ/∂z: Σt + 2ζ·lse (None when it is 1)."""
    scale = t_sum
    if spec.z_loss:
        scale = (1 if scale is None else scale) + 2 * zeta * lse
    return scale


def targets(labels, spec: LossSpec, eps, n_classes: int, start, width: int, dtype) -> Block:
    """Targets t of classes ``[start, start + width)``: class ids compared against an iota inside
    the fused expression (a scatter into a one-hot matrix is slower), or probability columns."""
    if spec.soft:
        t = labels.astype(dtype)
    else:
        ids = lax.broadcasted_iota(labels.dtype, (labels.shape[0], width), 1) + start
        t = (labels[:, None] == ids).astype(dtype)
    return (1 - eps) * t + eps / n_classes if spec.smoothing else t


def score_gradient(p: Block, t: Block, coef: RowVector, scale) -> Block:
    """∂(Σₙ cₙℓₙ)/∂z = c ⊙ (ŷ·scale − t) for one block."""
    p_scaled = p if scale is None else p * scale[:, None]
    return coef[:, None] * (p_scaled - t)


def label_gradient(z: Block, lse: RowVector, coef: RowVector, spec: LossSpec, eps) -> Block:
    """∂(Σₙ cₙℓₙ)/∂y = −c (1-ε) log ŷ = c (1-ε)(lse − z) for one block of probability columns."""
    g = coef[:, None] * (lse[:, None] - z)
    return (1 - eps) * g if spec.smoothing else g


def counted_rows(labels, spec: LossSpec, dtype) -> Float[Array, " N"]:
    """1 for rows that count, 0 for rows whose label is ``ignore_index``; shape (N,)."""
    if spec.soft:
        return jnp.ones(labels.shape[:1], dtype)
    return (labels != spec.ignore_index).astype(dtype)


def row_coefficients(labels, sample_weight, spec: LossSpec, dtype) -> Float[Array, " N"]:
    """cₙ: weight × counted-mask, divided by its sum for ``reduction="mean"``; shape (N,)."""
    weights = counted_rows(labels, spec, dtype)
    if sample_weight is not None:
        weights = weights * sample_weight.astype(dtype)
    if spec.reduction != "mean":
        return weights
    peak, inverse = weight_scale(weights)
    return (weights / peak) * inverse


def weight_scale(weights: Float[Array, " N"]) -> tuple[jax.Array, jax.Array]:
    """(peak, inverse) with 1/Σw = inverse / peak, computed without overflow or underflow.

    Weights near the float32 limit (1e38) would sum to inf and tiny ones to 0, so the sum is
    taken of w / max(w), which lies in [1, N]; divide by ``peak`` before multiplying by
    ``inverse``. ``inverse`` is 0 when every weight is 0 (a padded minibatch then contributes
    nothing; the public functions reject such input before it gets here).
    """
    peak = jnp.max(weights)
    peak = jnp.where(peak > 0, peak, 1)
    total = jnp.sum(weights / peak)
    return peak, jnp.where(total > 0, 1 / jnp.where(total > 0, total, 1), 0)
