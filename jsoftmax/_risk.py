r"""The softmax-regression risk and its analytic gradient.

With scores :math:`Z = XW + b` (N×K), predictions :math:`\hat Y = \mathrm{softmax}(Z)` row-wise,
targets :math:`T = (1-\varepsilon) Y + \varepsilon/K` and row coefficients
:math:`c_n = s_n m_n / \sum_j s_j m_j` (sample weights :math:`s`, mask :math:`m` of counted rows):

.. math::

    R(W, b) = \sum_n c_n \big(\mathrm{lse}(z_n)\,\textstyle\sum_k t_{nk} - t_n^\top z_n\big)
              + \tfrac{\lambda}{2}\lVert W\rVert^2

    \partial R/\partial Z = c \odot (\hat Y \odot \textstyle\sum_k T - T), \quad
    \partial R/\partial W = X^\top \partial Z + \lambda W, \quad
    \partial R/\partial b = \textstyle\sum_n \partial z_n, \quad
    \partial R/\partial X = \partial Z\, W^\top.

For probability rows (:math:`\sum_k t_{nk} = 1`) the score gradient is the familiar
:math:`\hat y - y` (DERIVATION.md, step 2); the general form :math:`\hat y \sum_k t_k - t` is
used throughout, so a row that does not sum to one still gets its true gradient.

Hot path: one matmul for the scores, one stable log-sum-exp, one softmax, one matmul for the
gradient. Integer labels are compared against an iota inside the fused expression rather than
scattered into a one-hot matrix (a scatter measured 1.5x the two-matmul floor here).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import _validate
from ._validate import accumulation_dtype, is_active


class Params(NamedTuple):
    """Model parameters: weights ``W`` (D, K) and an optional bias ``b`` (K,)."""

    W: jax.Array
    b: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Options:
    """Static options: each changes the compiled program, so each is a jit static argument."""

    soft: bool  # labels are (N, K) probability rows
    ignore_index: int
    smoothing: bool  # label_smoothing is non-zero (or traced)
    l2: bool  # l2 is non-zero (or traced)


class BlockTerms(NamedTuple):
    """Per-row quantities of one block of rows (everything the forward and backward need)."""

    loss: jax.Array  # (n,) unweighted per-row loss, 0 on rows that do not count
    lse: jax.Array  # (n,) log-sum-exp of the scores
    dz: jax.Array | None  # (n, K) dR/dz for the block, already scaled by the row coefficients


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` accumulated in float32 for 16-bit inputs (the MXU/tensor-core convention)."""
    return jnp.matmul(a, b, preferred_element_type=accumulation_dtype(a.dtype))


def scores(W: jax.Array, b: jax.Array | None, X: jax.Array) -> jax.Array:
    """Z = XW + b in the accumulation dtype, shape (N, K)."""
    z = matmul(X, W)
    return z if b is None else z + b.astype(z.dtype)


def row_coefficients(labels, sample_weight, opts: Options, n: int, dtype) -> jax.Array:
    """Counted-and-weighted rows ``s_n m_n`` (not yet normalised), shape (n,)."""
    if opts.soft:
        counted = jnp.ones((n,), dtype)
    else:
        counted = (labels != opts.ignore_index).astype(dtype)
    return counted if sample_weight is None else counted * sample_weight.astype(dtype)


def block_terms(z, labels, coef, smoothing, opts: Options, *, need_dz: bool) -> BlockTerms:
    """Loss, log-sum-exp and (optionally) the score gradient of a block of rows.

    Args:
      z: (n, K) scores in the accumulation dtype.
      labels: (n,) integer ids or (n, K) probability rows.
      coef: (n,) final row coefficients c_n (weights / total weight; 0 on ignored rows).
      smoothing: scalar label-smoothing epsilon (ignored unless ``opts.smoothing``).
    """
    k = z.shape[-1]
    m = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    lse = (m + jnp.log(s))[:, 0]
    if opts.soft:
        y = labels.astype(z.dtype)
        y_sum = jnp.sum(y, axis=-1)
        z_y = jnp.sum(y * z, axis=-1)
    else:
        # A gather of N scores, not a one-hot product: O(N) work and memory.
        safe = jnp.clip(labels, 0, k - 1)
        z_y = jnp.take_along_axis(z, safe[:, None], axis=-1)[:, 0]
        y_sum = jnp.ones_like(z_y)
    if opts.smoothing:
        eps = jnp.asarray(smoothing, z.dtype)
        t_sum = (1 - eps) * y_sum + eps
        t_z = (1 - eps) * z_y + eps * jnp.mean(z, axis=-1)
    else:
        eps = None
        t_sum, t_z = y_sum, z_y
    loss = jnp.where(coef != 0, lse * t_sum - t_z, 0)
    if not need_dz:
        return BlockTerms(loss, lse, None)
    p = e / s
    if opts.soft:
        target = y
    else:
        target = (labels[:, None] == lax.broadcasted_iota(labels.dtype, z.shape, 1)).astype(z.dtype)
    if opts.smoothing:
        target = (1 - eps) * target + eps / k
    dz = coef[:, None] * (p * t_sum[:, None] - target)
    return BlockTerms(loss, lse, dz)


def _normalised_coef(labels, sample_weight, opts: Options, n: int, dtype) -> jax.Array:
    weights = row_coefficients(labels, sample_weight, opts, n, dtype)
    return weights / jnp.sum(weights)


class _Full(NamedTuple):
    value: jax.Array
    gW: jax.Array | None
    gb: jax.Array | None
    gX: jax.Array | None
    terms: BlockTerms
    coef: jax.Array


def _evaluate(W, b, X, labels, sample_weight, l2, smoothing, opts: Options, *, grad_W, grad_X):
    """Shared body of every entry point: the risk and the requested analytic gradients."""
    z = scores(W, b, X)
    n = X.shape[0]
    coef = _normalised_coef(labels, sample_weight, opts, n, z.dtype)
    need_dz = grad_W or grad_X
    terms = block_terms(z, labels, coef, smoothing, opts, need_dz=need_dz)
    value = jnp.sum(coef * terms.loss)
    if opts.l2:
        value = value + 0.5 * jnp.asarray(l2, z.dtype) * jnp.sum(jnp.square(W.astype(z.dtype)))
    gW = gb = gX = None
    if need_dz:
        dz = terms.dz.astype(X.dtype)  # 16-bit inputs: the products still accumulate in f32
    if grad_W:
        gW = matmul(X.T, dz)
        if opts.l2:
            gW = gW + jnp.asarray(l2, gW.dtype) * W.astype(gW.dtype)
        gW = gW.astype(W.dtype)
        gb = None if b is None else jnp.sum(terms.dz, axis=0).astype(b.dtype)
    if grad_X:
        gX = matmul(dz, W.T).astype(X.dtype)
    return _Full(value, gW, gb, gX, terms, coef)


@partial(jax.jit, static_argnames=("opts",))
def _value_and_grad_kernel(W, b, X, labels, sample_weight, l2, smoothing, opts):
    full = _evaluate(W, b, X, labels, sample_weight, l2, smoothing, opts, grad_W=True, grad_X=False)
    return full.value, full.gW, full.gb


# --- jax.grad support: a custom VJP whose backward is the analytic gradient ---------------
#
# The forward pass, when differentiated, computes the loss and the gradients together in one
# pass over the scores (the Liger form); the backward only scales them by the cotangent. This
# avoids recomputing the N×K scores in the backward pass. `symbolic_zeros=True` tells `_fwd`
# which inputs are perturbed, so it computes dX only when X is being differentiated.
# Forward-mode (jax.jvp / jax.jacfwd) is not supported by a custom VJP.


@partial(jax.custom_vjp, nondiff_argnums=(7,))
def _risk_value(W, b, X, labels, sample_weight, l2, smoothing, opts):
    return _evaluate(W, b, X, labels, sample_weight, l2, smoothing, opts, grad_W=False, grad_X=False).value


def _primal(arg):
    """(value, perturbed) of a symbolic-zeros primal; ``None`` (an empty pytree) stays None."""
    if arg is None:
        return None, False
    return arg.value, arg.perturbed


def _risk_fwd(W, b, X, labels, sample_weight, l2, smoothing, opts):
    (Wv, W_p), (bv, b_p), (Xv, X_p), (yv, y_p), (swv, sw_p), (l2v, l2_p), (epsv, eps_p) = map(
        _primal, (W, b, X, labels, sample_weight, l2, smoothing)
    )
    if eps_p:
        raise TypeError(
            "differentiating the risk with respect to `label_smoothing` is not supported; "
            "pass it as a constant."
        )
    full = _evaluate(Wv, bv, Xv, yv, swv, l2v, epsv, opts, grad_W=W_p or b_p, grad_X=X_p)
    coef, terms = full.coef, full.terms
    g_labels = g_weights = g_l2 = None
    if y_p and opts.soft:
        # dR/dy_nk = -c_n (1 - eps) log softmax(z_n)_k
        log_p = scores(Wv, bv, Xv) - terms.lse[:, None]
        scale = 1 - jnp.asarray(epsv, log_p.dtype) if opts.smoothing else 1
        g_labels = (-coef[:, None] * scale * log_p).astype(yv.dtype)
    if sw_p:
        # R = sum(m w l) / sum(m w)  =>  dR/dw_n = m_n (l_n - R_data) / sum(m w)
        n = Xv.shape[0]
        weights = row_coefficients(yv, swv, opts, n, coef.dtype)
        mask = row_coefficients(yv, None, opts, n, coef.dtype)
        data_risk = jnp.sum(coef * terms.loss)
        g_weights = (mask * (terms.loss - data_risk) / jnp.sum(weights)).astype(swv.dtype)
    if l2_p:
        g_l2 = (0.5 * jnp.sum(jnp.square(Wv.astype(coef.dtype)))).astype(jnp.result_type(l2v))
    return full.value, (full.gW, full.gb, full.gX, g_labels, g_weights, g_l2)


def _risk_bwd(opts, residuals, g):
    # Every residual is already dR/d(input); the backward pass only scales by the cotangent.
    scaled = tuple(None if r is None else (g * r).astype(r.dtype) for r in residuals)
    gW, gb, gX, g_labels, g_weights, g_l2 = scaled
    return gW, gb, gX, g_labels, g_weights, g_l2, None


_risk_value.defvjp(_risk_fwd, _risk_bwd, symbolic_zeros=True)
_risk_jit = jax.jit(_risk_value, static_argnums=(7,))


# --- public API -------------------------------------------------------------------------


def _setup(params, X, labels, sample_weight, l2, label_smoothing, ignore_index, check_values):
    problem = _validate.prepare_problem(
        params, X, labels, sample_weight, l2, label_smoothing, ignore_index
    )
    if check_values:
        _validate.check_values(problem, ignore_index)
    opts = Options(
        soft=problem.soft,
        ignore_index=int(ignore_index),
        smoothing=is_active(label_smoothing),
        l2=is_active(l2),
    )
    return problem, opts


def _pack(params, gW, gb):
    """Gradients in the structure of the params given (a bare W in, a bare gradient out)."""
    return Params(gW, gb) if isinstance(params, Params) else gW


def risk(
    params: Params | jax.Array,
    X: jax.Array,
    labels: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    check_values: bool = True,
) -> jax.Array:
    r"""Cross-entropy risk of softmax regression.

    .. math::

        R(W, b) = -\frac{1}{\sum_n s_n} \sum_n s_n\, t_n^\top \log \mathrm{softmax}(W^\top x_n + b)
                  + \frac{\lambda}{2} \lVert W \rVert^2, \qquad t_n = (1-\varepsilon) y_n + \varepsilon / K

    Differentiable with ``jax.grad``/``jax.vjp``: the backward pass is the analytic gradient
    (a custom VJP), with respect to ``W``, ``b``, ``X``, probability labels, ``sample_weight``
    and ``l2``. Forward-mode differentiation is not supported.

    Args:
      params: :class:`Params` ``(W (D, K), b (K,) or None)`` or a bare ``W`` (D, K).
      X: (N, D) features, float64/float32/bfloat16 (16-bit inputs accumulate in float32).
      labels: (N,) integer class ids in ``[0, K)`` or (N, K) probability rows.
      sample_weight: optional (N,) non-negative weights :math:`s_n` (default 1).
      l2: L2 penalty :math:`\lambda \ge 0` on ``W`` (not on ``b``).
      label_smoothing: :math:`\varepsilon \in [0, 1)`.
      ignore_index: integer label that marks a row to leave out of the sum and the count.
      check_values: validate label ranges, probability rows, finiteness of X and weights
        (eagerly for concrete data, at run time under ``jit``); see ``jsoftmax._validate``.

    Returns:
      The scalar risk, float32 for 16-bit inputs, else the dtype of ``X``.

    Example:
      >>> import jax.numpy as jnp, jsoftmax
      >>> X = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> float(jsoftmax.risk(jnp.zeros((2, 3)), X, jnp.array([0, 2])))  # log 3
      1.0986123...
    """
    problem, opts = _setup(params, X, labels, sample_weight, l2, label_smoothing, ignore_index, check_values)
    W, b, X, labels, sample_weight, _ = problem
    return _risk_jit(W, b, X, labels, sample_weight, l2, label_smoothing, opts)


def value_and_grad(
    params: Params | jax.Array,
    X: jax.Array,
    labels: jax.Array,
    *,
    sample_weight: jax.Array | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    check_values: bool = True,
) -> tuple[jax.Array, Params | jax.Array]:
    r"""The risk and its analytic gradient in one pass that shares the softmax.

    .. math::

        \frac{\partial R}{\partial W} = X^\top(\hat Y \odot \textstyle\sum_k T - T)\, \mathrm{diag}(c)
        + \lambda W, \qquad \frac{\partial R}{\partial b} = \textstyle\sum_n c_n (\hat y_n - t_n)

    (with probability targets, :math:`\hat Y - Y` scaled by :math:`1/N` for unweighted rows).
    Same arguments as :func:`risk`.

    Returns:
      ``(risk, grad)`` where ``grad`` has the structure of ``params``: a :class:`Params` with
      ``W`` (D, K) and ``b`` (K,) or None, or a bare (D, K) array when a bare ``W`` was given.

    Example:
      >>> import jax.numpy as jnp, jsoftmax
      >>> X = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> value, grad = jsoftmax.value_and_grad(jsoftmax.Params(jnp.zeros((2, 3)), jnp.zeros(3)),
      ...                                       X, jnp.array([0, 2]))
      >>> grad.b  # mean of softmax - onehot: (1/3 - 1/2, 1/3, 1/3 - 1/2)
      Array([-0.16666..., 0.33333..., -0.16666...], dtype=float32)
    """
    problem, opts = _setup(params, X, labels, sample_weight, l2, label_smoothing, ignore_index, check_values)
    W, b, X, labels, sample_weight, _ = problem
    value, gW, gb = _value_and_grad_kernel(W, b, X, labels, sample_weight, l2, label_smoothing, opts)
    return value, _pack(params, gW, gb)


def risk_grad(
    params: Params | jax.Array,
    X: jax.Array,
    labels: jax.Array,
    **options: Any,
) -> Params | jax.Array:
    r"""The analytic gradient :math:`X^\top(\mathrm{softmax}(XW + b) - Y)/N + \lambda W`.

    Computed by the closed-form expression, never by autodiff. Same arguments as
    :func:`risk`; returns the gradient in the structure of ``params``.
    """
    return value_and_grad(params, X, labels, **options)[1]


@jax.jit
def _proba_kernel(W, b, X):
    return jax.nn.softmax(scores(W, b, X), axis=-1)


def predict_proba(params: Params | jax.Array, X: jax.Array) -> jax.Array:
    """Class probabilities softmax(XW + b), shape (N, K) (float32 for 16-bit inputs)."""
    W, b, X = _validate.prepare_features(params, X)
    return _proba_kernel(W, b, X)


@jax.jit
def _predict_kernel(W, b, X):
    return jnp.argmax(scores(W, b, X), axis=-1)


def predict(params: Params | jax.Array, X: jax.Array) -> jax.Array:
    """Most probable class id per row, argmax of XW + b, shape (N,)."""
    W, b, X = _validate.prepare_features(params, X)
    return _predict_kernel(W, b, X)
