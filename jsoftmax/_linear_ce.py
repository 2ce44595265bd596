r"""Fused, memory-bounded linear cross-entropy: the loss of a linear head without the N×K logits.

.. math::

    \ell_n = \mathrm{lse}(z_n) \textstyle\sum_k t_{nk} - t_n^\top z_n + \zeta\, \mathrm{lse}(z_n)^2,
    \qquad z_n = x_n W + b,\; t_n = (1-\varepsilon) y_n + \varepsilon / K

Implementations:

* ``"reference"``: plain ``jnp`` with the logits materialised, differentiated by JAX's own
  autodiff. The oracle, fine for small problems.
* ``"chunked"``: the rows go through a ``lax.fori_loop`` in chunks of ``chunk_size``, so only
  ``chunk_size × K`` scores are live (``chunk_size × class_chunk_size`` with class blocks and an
  online log-sum-exp when K is huge). The backward pass is the analytic gradient
  dz = c·(softmax(z)·Σt + 2ζ·lse·softmax(z) − t), dW = xᵀdz, dx = dz Wᵀ, db = Σdz.
* ``"auto"``: ``"chunked"``, with chunk sizes from a memory budget (``choose_chunks``).

Two ways to organise the chunked backward, chosen by measurement on this machine
(2 cores, f32, N=8192, D=512, K=1000; ``python -m benchmarks.run --suite hot``):

* ``reduction="mean"``/``"sum"`` (a scalar loss): the forward pass, when differentiated,
  computes the loss and all requested gradients in the same pass over each chunk, and the
  backward only scales them by the scalar cotangent (the Liger-Kernel form). It reads x and W
  once and forms each chunk's scores once; recomputing them in the backward (the
  cut-cross-entropy form) costs one more x@W per chunk (prototypes: 0.85–0.96× the two-matmul
  floor for this form against 1.28× for recomputing).
* ``reduction="none"``: the cotangent is per row and unknown in the forward, so the forward
  saves the (N,) log-sum-exp and the backward recomputes each chunk's scores from x, W and it
  (the cut-cross-entropy form).

Labels get no cotangent (integer ids, and probability rows are treated as constants).
Forward-mode differentiation is not supported (custom VJP).
"""

from __future__ import annotations

import dataclasses
from functools import partial
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from . import _engine, _sharding, _validate
from ._engine import Options
from ._reference import reference_targets
from ._risk import Params

REDUCTIONS = ("mean", "sum", "none")
IMPLEMENTATIONS = ("auto", "chunked", "reference")


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static configuration of one compiled op."""

    opts: Options
    reduction: str
    chunk_rows: int
    class_chunk: int | None
    return_lse: bool


def _coefficients(labels, cfg: _Config, dtype):
    counted = _engine.counted_rows(labels, cfg.opts, dtype)
    if cfg.reduction == "mean":
        total = jnp.sum(counted)
        return counted / jnp.where(total > 0, total, 1)
    return counted


def _run(x, w, b, labels, eps, zeta, cfg: _Config, coef, **kwargs):
    return _sharding.run_evaluate(w, b, x, labels, coef, 0.0, eps, zeta, cfg.opts,
                                  chunk_rows=cfg.chunk_rows, class_chunk=cfg.class_chunk, **kwargs)


# --- chunked op with a custom VJP ---------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunked(x, w, b, labels, eps, zeta, cfg: _Config):
    coef = _coefficients(labels, cfg, _validate.accumulation_dtype(x.dtype))
    rows_out = cfg.reduction == "none" or cfg.return_lse
    ev = _run(x, w, b, labels, eps, zeta, cfg, coef, grad_W=False, grad_X=False, rows_out=rows_out)
    return _package(ev, cfg, coef)


def _package(ev, cfg: _Config, coef):
    if cfg.reduction == "none":
        loss = jnp.where(coef != 0, ev.loss, 0)
    else:
        loss = ev.value
    return (loss, ev.lse) if cfg.return_lse else loss


def _primal(arg):
    return (None, False) if arg is None else (arg.value, arg.perturbed)


def _chunked_fwd(x, w, b, labels, eps, zeta, cfg: _Config):
    (xv, x_p), (wv, w_p), (bv, b_p), (yv, _), (epsv, eps_p), (zv, z_p) = map(
        _primal, (x, w, b, labels, eps, zeta))
    if eps_p or z_p:
        raise TypeError("differentiating with respect to `label_smoothing` or `z_loss` is not "
                        "supported; pass them as constants.")
    coef = _coefficients(yv, cfg, _validate.accumulation_dtype(xv.dtype))
    rows_out = cfg.reduction == "none" or cfg.return_lse
    if cfg.reduction == "none":
        # Recompute form: save only the per-row log-sum-exp.
        ev = _run(xv, wv, bv, yv, epsv, zv, cfg, coef, grad_W=False, grad_X=False, rows_out=True)
        # Residuals must be JAX values: "which gradients" travels as None / an empty array.
        wanted = tuple(jnp.zeros((0,)) if flag else None for flag in (x_p, w_p or b_p))
        residuals = (xv, wv, bv, yv, epsv, zv, ev.lse, coef, wanted)
    else:
        # One-pass form: gradients now, scaled by the scalar cotangent in the backward.
        ev = _run(xv, wv, bv, yv, epsv, zv, cfg, coef, grad_W=w_p or b_p, grad_X=x_p, rows_out=rows_out)
        grads = (
            None if not x_p else ev.gX.astype(xv.dtype),
            None if not w_p else ev.gW.astype(wv.dtype),
            None if not (b_p and bv is not None) else ev.gb.astype(bv.dtype),
        )
        residuals = grads
    return _package(ev, cfg, coef), residuals


def _chunked_bwd(cfg: _Config, residuals, cotangent):
    if cfg.return_lse:
        cotangent, lse_cotangent = cotangent
        if not isinstance(lse_cotangent, SymbolicZero):
            raise TypeError("the returned log-sum-exp is an auxiliary output and is not "
                            "differentiated; use `z_loss` to penalise it.")
    if isinstance(cotangent, SymbolicZero):
        cotangent = jnp.zeros(cotangent.shape, cotangent.dtype)
    if cfg.reduction != "none":
        gx, gw, gb = residuals

        def scaled(g):
            return None if g is None else (cotangent * g).astype(g.dtype)

        return scaled(gx), scaled(gw), scaled(gb), None, None, None
    xv, wv, bv, yv, epsv, zv, lse, coef, wanted = residuals
    x_p, wb_p = (flag is not None for flag in wanted)
    row_coef = coef * cotangent.astype(coef.dtype)
    ev = _run(xv, wv, bv, yv, epsv, zv, cfg, row_coef, grad_W=wb_p, grad_X=x_p, lse=lse)
    gx = ev.gX.astype(xv.dtype) if x_p else None
    gw = ev.gW.astype(wv.dtype) if wb_p else None
    gb = ev.gb.astype(bv.dtype) if (wb_p and bv is not None) else None
    return gx, gw, gb, None, None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)
_chunked_jit = jax.jit(_chunked, static_argnums=(6,))


# --- reference ----------------------------------------------------------------------------


@partial(jax.jit, static_argnums=(6,))
def _reference(x, w, b, labels, eps, zeta, cfg: _Config):
    """Plain jnp, logits materialised, JAX autodiff for the gradient (the oracle)."""
    acc = _validate.accumulation_dtype(x.dtype)
    z = jnp.matmul(x, w, preferred_element_type=acc)
    if b is not None:
        z = z + b.astype(acc)
    k = w.shape[1]
    t = reference_targets(labels, k, label_smoothing=eps).astype(acc)
    lse = jax.nn.logsumexp(z, axis=-1)
    loss = -jnp.sum(t * (z - lse[:, None]), axis=-1) + zeta * lse**2
    counted = _engine.counted_rows(labels, cfg.opts, acc)
    loss = jnp.where(counted != 0, loss, 0)
    if cfg.reduction == "mean":
        out = jnp.sum(loss) / jnp.sum(counted)
    elif cfg.reduction == "sum":
        out = jnp.sum(loss)
    else:
        out = loss
    return (out, jax.lax.stop_gradient(lse)) if cfg.return_lse else out


# --- public -------------------------------------------------------------------------------


def linear_cross_entropy(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    *,
    bias: jax.Array | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    implementation: str = "auto",
    chunk_size: int | None = None,
    class_chunk_size: int | None = None,
    return_lse: bool = False,
    check_values: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str | None = None,
    class_axis: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Cross-entropy of the linear head ``x @ w + bias`` without materialising the logits.

    Args:
      x: (N, D) inputs (e.g. a language model's final hidden states), f32/f64/bf16.
      w: (D, K) head weights, same dtype as ``x``; bias: optional (K,).
      labels: (N,) integer ids in [0, K) (``ignore_index`` rows leave the loss and the count),
        or (N, K) probability rows.
      reduction: "mean" over counted rows, "sum", or "none" (per row, 0 on ignored rows).
      label_smoothing: ε in [0, 1). z_loss: ζ ≥ 0, adds ζ·lse² per row (PaLM's z-loss).
      implementation: "auto", "chunked" or "reference" (materialised logits, autodiff).
      chunk_size: rows per chunk; class_chunk_size: classes per block (online log-sum-exp).
        Default: a rule from measured block sizes within a 128 MiB budget (:func:`choose_chunks`).
      return_lse: also return the (N,) log-sum-exp (auxiliary; not differentiated).
      check_values: label-range and finiteness checks (see :func:`jsoftmax.risk`).
      mesh, data_axis, class_axis: shard rows over ``data_axis`` and W's columns over
        ``class_axis`` of a ``jax.sharding.Mesh`` (chunked implementation only).

    Returns:
      The loss (a scalar, or (N,) with ``reduction="none"``), float32 for 16-bit inputs;
      ``(loss, lse)`` with ``return_lse``. Gradients with respect to x, w and bias come back in
      their own dtypes.

    Example:
      >>> import jax, jax.numpy as jnp, jsoftmax
      >>> x = jnp.ones((4, 3)); w = jnp.zeros((3, 5)); y = jnp.array([0, 1, 2, -100])
      >>> round(float(jsoftmax.linear_cross_entropy(x, w, y)), 5)  # log 5 over the 3 counted rows
      1.60944
      >>> jax.grad(jsoftmax.linear_cross_entropy, argnums=1)(x, w, y).shape
      (3, 5)
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}.")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {', '.join(map(repr, IMPLEMENTATIONS))}; "
                         f"got {implementation!r}.")
    chunk_size = _validate.check_chunk(chunk_size, "chunk_size")
    class_chunk_size = _validate.check_chunk(class_chunk_size, "class_chunk_size")
    _validate._check_scalar(z_loss, "z_loss", low=0.0, high=None)
    problem = _validate.prepare_problem(Params(w, bias), x, labels, None, 0.0, label_smoothing, ignore_index)
    _sharding.check_mesh(mesh, data_axis, class_axis, problem.X.shape[0], problem.W.shape[1])
    placed = _sharding.place_inputs(mesh, data_axis, class_axis, problem.W, problem.b, problem.X,
                                    problem.labels, None)
    problem = problem._replace(**dict(zip(("W", "b", "X", "labels"), placed[:4])))
    if check_values:
        _validate.check_values(problem, ignore_index)
    w, bias, x, labels, _, soft = problem
    if mesh is not None:
        if implementation == "reference":
            raise ValueError("`mesh` needs implementation='chunked' or 'auto'.")
        if class_axis is not None and class_chunk_size is not None:
            raise ValueError("`class_chunk_size` cannot be combined with `class_axis`: the mesh splits the classes.")
    opts = Options(soft=soft, ignore_index=int(ignore_index),
                   smoothing=_validate.is_active(label_smoothing), z_loss=_validate.is_active(z_loss),
                   mesh=_sharding.auto_mesh(mesh), data_axis=data_axis, class_axis=class_axis)
    rows, classes = _sharding.local_chunks(opts, x.shape[0], w.shape[1], chunk_size, class_chunk_size)
    cfg = _Config(opts=opts, reduction=reduction, chunk_rows=rows, class_chunk=classes,
                  return_lse=bool(return_lse))
    fn = _reference if implementation == "reference" else _chunked_jit
    return fn(x, w, bias, labels, label_smoothing, z_loss, cfg)

