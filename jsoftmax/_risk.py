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

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _engine, _sharding, _validate
from ._engine import Options
from ._validate import is_active


class Params(NamedTuple):
    """Model parameters: weights ``W`` (D, K) and an optional bias ``b`` (K,)."""

    W: jax.Array
    b: jax.Array | None = None


def normalised_coef(labels, sample_weight, opts: Options, dtype) -> jax.Array:
    """c_n = s_n m_n / sum_j s_j m_j: weight times counted-mask, normalised; shape (N,)."""
    weights = _engine.counted_rows(labels, opts, dtype)
    if sample_weight is not None:
        weights = weights * sample_weight.astype(dtype)
    total = jnp.sum(weights)
    # A minibatch whose rows all carry weight 0 contributes nothing (instead of 0/0). The public
    # functions reject such input before it gets here.
    return weights / jnp.where(total > 0, total, 1)


def _evaluate(W, b, X, labels, sample_weight, l2, smoothing, opts: Options, *, grad_W, grad_X,
              rows_out=False):
    """The risk and the requested analytic gradients (see :func:`jsoftmax._engine.evaluate`)."""
    acc = _validate.accumulation_dtype(X.dtype)
    coef = normalised_coef(labels, sample_weight, opts, acc)
    rows, classes = _sharding.local_chunks(opts, X.shape[0], W.shape[1], opts.chunk_rows)
    return _sharding.run_evaluate(W, b, X, labels, coef, l2, smoothing, 0.0, opts, grad_W=grad_W,
                                  grad_X=grad_X, rows_out=rows_out, chunk_rows=rows, class_chunk=classes)


@partial(jax.jit, static_argnames=("opts",))
def _value_and_grad_kernel(W, b, X, labels, sample_weight, l2, smoothing, opts):
    full = _evaluate(W, b, X, labels, sample_weight, l2, smoothing, opts, grad_W=True, grad_X=False)
    gb = None if b is None else full.gb.astype(b.dtype)
    return full.value, full.gW.astype(W.dtype), gb


# --- jax.grad support: a custom VJP whose backward is the analytic gradient ---------------
#
# The forward pass, when differentiated, computes the loss and the gradients together in one
# pass over the scores (the Liger form); the backward only scales them by the cotangent, so
# the N×K scores are never recomputed. `symbolic_zeros=True` tells `_risk_fwd` which inputs
# are perturbed: it computes dX only when X is differentiated, and so on.
# Forward-mode (jax.jvp / jax.jacfwd) is not supported by a custom VJP.


@partial(jax.custom_vjp, nondiff_argnums=(7,))
def _risk_value(W, b, X, labels, sample_weight, l2, smoothing, opts):
    return _evaluate(W, b, X, labels, sample_weight, l2, smoothing, opts, grad_W=False,
                     grad_X=False).value


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
    soft_grad = y_p and opts.soft
    full = _evaluate(Wv, bv, Xv, yv, swv, l2v, epsv, opts, grad_W=W_p or b_p, grad_X=X_p,
                     rows_out=sw_p or soft_grad)
    acc = full.value.dtype
    g_labels = g_weights = g_l2 = None
    if soft_grad:
        # dR/dy_nk = -c_n (1 - eps) log softmax(z_n)_k
        coef = normalised_coef(yv, swv, opts, acc)
        log_p = _engine.scores(Wv, bv, Xv) - full.lse[:, None]
        scale = 1 - jnp.asarray(epsv, acc) if opts.smoothing else 1
        g_labels = (-coef[:, None] * scale * log_p).astype(yv.dtype)
    if sw_p:
        # R = sum(m w l) / sum(m w)  =>  dR/dw_n = m_n (l_n - R_data) / sum(m w)
        mask = _engine.counted_rows(yv, opts, acc)
        total = jnp.sum(mask * swv.astype(acc))
        data_risk = jnp.sum(mask * swv * full.loss) / total
        g_weights = (mask * (full.loss - data_risk) / total).astype(swv.dtype)
    if l2_p:
        g_l2 = (0.5 * jnp.sum(jnp.square(Wv.astype(acc)))).astype(jnp.result_type(l2v))

    def cast(g, like):
        return None if g is None else g.astype(like.dtype)

    residuals = (cast(full.gW, Wv), cast(full.gb, bv) if bv is not None else None,
                 cast(full.gX, Xv), g_labels, g_weights, g_l2)
    return full.value, residuals


def _risk_bwd(opts, residuals, g):
    # Every residual is already dR/d(input); the backward pass only scales by the cotangent.
    scaled = tuple(None if r is None else (g * r).astype(r.dtype) for r in residuals)
    gW, gb, gX, g_labels, g_weights, g_l2 = scaled
    return gW, gb, gX, g_labels, g_weights, g_l2, None


_risk_value.defvjp(_risk_fwd, _risk_bwd, symbolic_zeros=True)
_risk_jit = jax.jit(_risk_value, static_argnums=(7,))


# --- public API -------------------------------------------------------------------------


def setup(params, X, labels, sample_weight, l2, label_smoothing, ignore_index, check_values=True,
          chunk_rows=None, mesh=None, data_axis=None, class_axis=None):
    """Validate and place the inputs; return the :class:`Problem` and its static :class:`Options`.

    The one preamble of every entry point (risk, value_and_grad, fit, check_gradient).
    """
    problem = _validate.prepare_problem(
        params, X, labels, sample_weight, l2, label_smoothing, ignore_index
    )
    _sharding.check_mesh(mesh, data_axis, class_axis, problem.X.shape[0], problem.W.shape[1])
    placed = _sharding.place_inputs(mesh, data_axis, class_axis, problem.W, problem.b, problem.X,
                                    problem.labels, problem.sample_weight)
    problem = problem._replace(**dict(zip(("W", "b", "X", "labels", "sample_weight"), placed)))
    if check_values:
        _validate.check_values(problem, ignore_index)
    opts = Options(
        soft=problem.soft,
        ignore_index=int(ignore_index),
        smoothing=is_active(label_smoothing),
        l2=is_active(l2),
        chunk_rows=_validate.check_chunk(chunk_rows, "chunk_rows"),
        mesh=_sharding.auto_mesh(mesh),
        data_axis=data_axis,
        class_axis=class_axis,
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
    chunk_rows: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str | None = None,
    class_axis: str | None = None,
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
      chunk_rows: rows of scores live at a time (static). Default: the measured rule of
        :func:`jsoftmax._engine.choose_chunk_rows` (≥ 1024 rows, ≤ 128 MiB of f32 scores).
      mesh, data_axis, class_axis: run sharded over a ``jax.sharding.Mesh``: rows over
        ``data_axis``, W's columns over ``class_axis`` (either or both; see ``_sharding``).

    Returns:
      The scalar risk, float32 for 16-bit inputs, else the dtype of ``X``.

    Example:
      >>> import jax.numpy as jnp, jsoftmax
      >>> X = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> float(jsoftmax.risk(jnp.zeros((2, 3)), X, jnp.array([0, 2])))  # log 3
      1.0986123...
    """
    problem, opts = setup(params, X, labels, sample_weight, l2, label_smoothing, ignore_index,
                           check_values, chunk_rows, mesh, data_axis, class_axis)
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
    chunk_rows: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str | None = None,
    class_axis: str | None = None,
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
    problem, opts = setup(params, X, labels, sample_weight, l2, label_smoothing, ignore_index,
                           check_values, chunk_rows, mesh, data_axis, class_axis)
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
    return jax.nn.softmax(_engine.scores(W, b, X), axis=-1)


def predict_proba(params: Params | jax.Array, X: jax.Array) -> jax.Array:
    """Class probabilities softmax(XW + b), shape (N, K) (float32 for 16-bit inputs)."""
    W, b, X = _validate.prepare_features(params, X)
    return _proba_kernel(W, b, X)


@jax.jit
def _predict_kernel(W, b, X):
    return jnp.argmax(_engine.scores(W, b, X), axis=-1)


def predict(params: Params | jax.Array, X: jax.Array) -> jax.Array:
    """Most probable class id per row, argmax of XW + b, shape (N,)."""
    W, b, X = _validate.prepare_features(params, X)
    return _predict_kernel(W, b, X)
