r"""The public loss functions: one preamble, one custom VJP, thin wrappers.

Every public loss is the same operation — scores :math:`Z = XW + b` into a weighted
cross-entropy (``docs/derivation.md``) — so every entry point goes through :func:`prepare`
(validate, place on a mesh, check values; returns a :class:`~jsoftmax._types.LossSpec` and a
:class:`~jsoftmax._types.Plan`) and through one ``jax.custom_vjp``, :func:`loss`, whose backward
is the analytic gradient computed by the engine. ``risk`` is :func:`loss` with
``reduction="mean"`` plus :math:`\tfrac{\lambda}{2}\lVert W\rVert^2`, added outside the VJP
(plain autodiff differentiates it); ``linear_cross_entropy`` is :func:`loss` itself.

Backward passes (chosen by the reduction):

* scalar loss ("mean", "sum"): when differentiated, the forward pass computes the loss and
  every requested gradient in the same pass over each chunk of scores, and the backward only
  scales them by the scalar cotangent (the Liger-Kernel form; one x@W per chunk).
* "none": the cotangent is per row and unknown in the forward, so the forward saves the (N,)
  log-sum-exp and the backward recomputes each chunk's scores (the cut-cross-entropy form).

Gradients flow to W, b, X, probability labels and sample weights; integer labels get none.
Forward-mode differentiation (``jax.jvp``) is not supported by a custom VJP and raises
``TypeError``.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.sharding import PartitionSpec as P

from . import _aot, _engine, _host, _inplace, _layouts, _mesh, _rows, _sparse, _validate
from ._reference import reference_loss
from ._types import (
    Bias,
    Features,
    Labels,
    LossSpec,
    Params,
    Plan,
    RowValues,
    Want,
    Weights,
    accumulation_dtype,
)

IMPLEMENTATIONS = ("auto", "chunked", "reference")
# "auto" takes the platform's rule in _rules.json: the one-pass form, which ran the LM head at
# 1.11-1.15x the three-matmul floor on an H200 where the recompute form (a fourth product) ran
# 1.43-1.46x (benchmarks/results/gpu/h200-run3).
BACKWARDS = ("auto", "fused", "recompute")


# --- the preamble ------------------------------------------------------------------------


def prepare(params, X, labels, *, sample_weight=None, l2=0.0, label_smoothing=0.0, z_loss=0.0,
            ignore_index=-100, reduction="mean", check_values=True, chunk_rows=None,
            class_chunk=None, mesh=None, data_axis=None, class_axis=None, softcap=None,
            backward="auto", weight_grad_accumulation="auto", in_place=False,
            feature_memory="device", names=_validate.RISK_NAMES, require_counted=True
            ) -> tuple[_validate.Problem, LossSpec, Plan]:
    """Validate and place the inputs of any loss; return them with what the loss is and how it
    runs. Raises ``ValueError``/``TypeError`` naming the argument (see ``_validate``).

    ``in_place``: a large NumPy X (or a sparse X's CSR arrays) on a CPU is read where it lies
    instead of copied (``_inplace``, ``_sparse``); for callers that block until their program
    ends (fits), since X must not change while it runs. Not with a ``mesh``. ``feature_memory``:
    ``"device"``, ``"host"`` or ``"auto"`` — with ``in_place``, a dense X may stay in host memory
    and reach the device a block of rows at a time (``_host``). ``names``: how the
    calling function names its arguments (for messages); ``require_counted``: refuse concrete
    data in which no row counts (see ``_validate.check_values``)."""
    feature_memory = _validate.check_choice(feature_memory, "feature_memory", _host.FEATURE_MEMORIES)
    if feature_memory == "host" and (mesh is not None or not in_place):
        raise ValueError("feature_memory='host' needs a full-batch fit on one device (no `mesh`, no "
                         "`batch_size`): the row blocks stream from host memory in order.")
    if isinstance(X, _sparse.ProcessRows):  # this process's rows of a multi-process X
        X = _process_rows(X, mesh, data_axis, class_axis, names)
    problem = _validate.prepare_problem(params, X, labels, sample_weight, l2, label_smoothing,
                                        ignore_index, keep_host=in_place and mesh is None, names=names)
    _validate.check_scalar(z_loss, "z_loss", low=0.0, high=None)
    softcap = _validate.check_softcap(softcap)
    backward = _validate.check_choice(backward, "backward", BACKWARDS)
    grad_dtype = _engine.weight_grad_dtype(problem.X.dtype, problem.X.shape[1], problem.W.shape[1],
                                           weight_grad_accumulation)
    chunk_rows = _validate.check_chunk(chunk_rows, "chunk_rows")
    class_chunk = _validate.check_chunk(class_chunk, "class_chunk_size")
    n, k = problem.X.shape[0], problem.W.shape[1]
    _mesh.check_mesh(mesh, data_axis, class_axis, n, k)
    if class_axis is not None and class_chunk is not None:
        raise ValueError("`class_chunk_size` cannot be combined with `class_axis`: the mesh "
                         "splits the classes.")
    local_rows = isinstance(problem.X, _sparse.ProcessRows)  # laid out below, once the plan is known
    sparse = isinstance(problem.X, _sparse.CSR) or local_rows
    if sparse and class_chunk is not None:
        raise ValueError("`class_chunk_size` is not supported for a sparse X: its chunks hold all "
                         "K classes (text problems have few).")
    if sparse and mesh is not None and (class_axis is not None or data_axis is None):
        raise ValueError("a sparse X is sharded over its rows only: give `data_axis` and no "
                         "`class_axis`.")
    spec = LossSpec(soft=problem.soft, ignore_index=int(ignore_index),
                    smoothing=_validate.is_active(label_smoothing),
                    z_loss=_validate.is_active(z_loss), reduction=reduction, softcap=softcap)
    plan = _engine.make_plan(n, problem.X.shape[1], k, chunk_rows=chunk_rows, class_chunk=class_chunk,
                             mesh=_mesh.auto_mesh(mesh), data_axis=data_axis, class_axis=class_axis,
                             grad_dtype=grad_dtype, recompute=_engine.recompute_backward(backward),
                             sparse_indptr=(problem.X.rows.indptr if local_rows else problem.X.indptr) if sparse
                             else None,
                             itemsize=np.dtype(problem.X.dtype).itemsize)
    if sparse and feature_memory == "host":
        raise ValueError("feature_memory='host' takes a dense X; a sparse X is held on the device "
                         "as its stored entries (usually far smaller).")
    host = (in_place and mesh is None and not sparse and _host.keeps_on_host(
        feature_memory, problem.X, _host.working_bytes(problem.X.shape[1], k, plan.chunk_rows,
                                                       np.dtype(problem.X.dtype).itemsize)))
    placed = _mesh.place_inputs(mesh, data_axis, class_axis, W=problem.W, b=problem.b,
                                X=None if sparse or host else problem.X, labels=problem.labels,
                                sample_weight=problem.sample_weight)
    if sparse:
        placed["X"] = problem.X
    elif host:  # in host memory, read by the device a block of rows at a time
        placed["X"] = _host.place(problem.X, plan.chunk_rows)
    elif isinstance(placed["X"], np.ndarray):  # kept on the host for in_place: read where it lies
        placed["X"] = _inplace.place(placed["X"], plan.chunk_rows)
    problem = problem._replace(**placed)
    if check_values:
        _validate.check_values(problem, ignore_index, names=names, require_counted=require_counted)
        _validate.check_params(problem.W, problem.b, names=names, l2=(l2, 0.0, np.inf),
                               label_smoothing=(label_smoothing, 0.0, 1.0),
                               z_loss=(z_loss, 0.0, np.inf))
    if local_rows:  # each process lays out its own rows; the processes agree on the chunks
        problem = problem._replace(X=_sparse.across_processes(problem.X.rows, plan.chunk_rows, plan.mesh, data_axis))
        plan = dataclasses.replace(plan, chunk_rows=problem.X.chunk_rows)
    elif sparse:  # laid out for the plan's chunks, on the device (each device its own rows)
        blocks, sharding = 1, None
        if plan.mesh is not None:
            blocks = plan.mesh.shape[data_axis]
            sharding = jax.sharding.NamedSharding(plan.mesh, jax.sharding.PartitionSpec(data_axis))
        problem = problem._replace(X=_sparse.chunked_rows(problem.X, plan.chunk_rows, blocks=blocks,
                                                          sharding=sharding,
                                                          in_place=in_place and mesh is None))
    return problem, spec, plan


def _process_rows(X: _sparse.ProcessRows, mesh, data_axis, class_axis, names) -> Any:
    """``X``'s rows of this process: a dense X as the global array they form (JAX's
    ``make_array_from_process_local_data``); a sparse one validated here, laid out by
    ``prepare`` once the plan is known."""
    if mesh is None or data_axis is None or class_axis is not None:
        raise ValueError(f"`{names.X}` given as ProcessRows (this process's rows) needs a `mesh` with a "
                         "`data_axis` over the processes' devices, and no `class_axis`.")
    if X.sparse:
        csr = _sparse.as_csr(X.rows, names.X)
        _sparse.agree_on_process_rows(*csr.shape, bool(np.all(np.isfinite(csr.data))), mesh, data_axis)
        return _sparse.ProcessRows(csr)
    rows = _validate.host_array(X.rows, names.X)
    _sparse.agree_on_process_rows(*rows.shape, _validate.host_finite(rows), mesh, data_axis)
    sharding = jax.sharding.NamedSharding(_mesh.auto_mesh(mesh), P(data_axis, None))
    return jax.make_array_from_process_local_data(sharding, rows, X.shape)


def plan_rows(plan: Plan, rows: int, d: int, k: int, itemsize: int, *, classes: int | None = None) -> Plan:
    """``plan`` for another number of rows at a time (a minibatch), or for ``classes`` live
    classes per chunk (M models' stacked scores under ``vmap``): the same mesh and axes."""
    new = _engine.make_plan(rows, d, classes or k, mesh=plan.mesh, data_axis=plan.data_axis,
                            class_axis=plan.class_axis, itemsize=itemsize)
    if classes is None:
        return new
    return dataclasses.replace(plan, chunk_rows=new.chunk_rows, feature_blocks=new.feature_blocks)


def hessian_diagonal(P, r, X):
    """The loss Hessian's diagonal from :func:`curvature`'s P and r (``docs/derivation.md`` §13)."""
    return _engine.hessian_diagonal(P, r, X)


def layout_kind(X) -> str:
    """``"sparse"`` or ``"dense"``: the kind of layout ``prepare`` left X in (``_layouts``)."""
    return _layouts.kind(X)


def fixed_chunks(X) -> bool:
    """X's layout fixes its row chunks (a later plan cannot change them; ``_layouts``)."""
    return _layouts.chunked(X)


def rule(name: str):
    """A rule of ``jsoftmax/_rules.json`` (each with the benchmark run behind it)."""
    return _engine.RULES[name]


# --- the one operation and its custom VJP ---------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def loss(W: Weights, b: Bias | None, X: Features, labels: Labels, sample_weight: RowValues | None,
         eps, zeta, spec: LossSpec, plan: Plan, return_lse: bool = False,
         return_predictions: bool = False):
    """Σₙ cₙℓₙ (or cₙℓₙ per row for ``spec.reduction == "none"``) of validated inputs.

    Returns the loss in the accumulation dtype; with ``return_lse`` and/or
    ``return_predictions`` a tuple that adds the (N,) log-sum-exp and the (N,) int32 arg-max
    class of each row, in that order (auxiliary outputs of the same pass, not differentiated).
    """
    coef = _rows.row_coefficients(labels, sample_weight, spec, accumulation_dtype(X.dtype))
    want = Want(rows=spec.reduction == "none" or return_lse, predictions=return_predictions)
    ev = _engine.evaluate(W, b, X, labels, coef, eps, zeta, spec, plan, want)
    return _package(ev, coef, spec, return_lse, return_predictions)


def _package(ev, coef, spec: LossSpec, return_lse: bool, return_predictions: bool):
    out = jnp.where(coef != 0, coef * ev.loss, 0) if spec.reduction == "none" else ev.value
    extras = (ev.lse,) * return_lse + (ev.predicted,) * return_predictions
    return (out, *extras) if extras else out


def _primal(arg):
    """(value, perturbed) of a symbolic-zeros primal; ``None`` (an empty pytree) stays None; a
    pytree (a sparse X) is perturbed when any of its leaves is."""
    if arg is None:
        return None, False
    if hasattr(arg, "value"):
        return arg.value, arg.perturbed
    leaves, tree = jax.tree_util.tree_flatten(arg, is_leaf=lambda leaf: hasattr(leaf, "perturbed"))
    return (jax.tree_util.tree_unflatten(tree, [leaf.value for leaf in leaves]),
            any(leaf.perturbed for leaf in leaves))


def _loss_fwd(W, b, X, labels, sample_weight, eps, zeta, spec, plan, return_lse, return_predictions):
    (W, W_p), (b, b_p), (X, X_p), (labels, y_p), (sw, sw_p), (eps, eps_p), (zeta, zeta_p) = map(
        _primal, (W, b, X, labels, sample_weight, eps, zeta))
    if eps_p or zeta_p:
        raise TypeError("differentiating with respect to `label_smoothing` or `z_loss` is not "
                        "supported; pass them as constants.")
    if X_p and _layouts.kind(X) == "sparse":
        raise TypeError("differentiating with respect to a sparse `X` is not supported; its "
                        "stored values are data, not parameters.")
    acc = accumulation_dtype(X.dtype)
    coef = _rows.row_coefficients(labels, sw, spec, acc)
    grads = Want(grad_W=W_p or b_p, grad_X=X_p, grad_labels=y_p and spec.soft)
    if spec.reduction == "none" or plan.recompute:
        # Recompute form: keep the per-row log-sum-exp (and what the weights' gradient needs).
        ev = _engine.evaluate(W, b, X, labels, coef, eps, zeta, spec, plan,
                              Want(rows=True, predictions=return_predictions))
        # Residuals must be JAX values: "which gradients" travels as None / an empty array.
        flags = tuple(jnp.zeros((0,)) if flag else None for flag in grads[:3])
        weight_part = None
        if sw_p:  # per row: ℓₙ (times the row cotangent later); scalar: the full ∂/∂w now
            weight_part = ev.loss if spec.reduction == "none" else _weight_gradient(ev, labels, sw, spec, acc)
        residuals = (W, b, X, labels, sw, eps, zeta, ev.lse, weight_part, flags)
        return _package(ev, coef, spec, return_lse, return_predictions), residuals
    # One-pass form: every gradient now, scaled by the scalar cotangent in the backward.
    ev = _engine.evaluate(W, b, X, labels, coef, eps, zeta, spec, plan,
                          grads._replace(rows=sw_p or return_lse, predictions=return_predictions))
    g_sw = _weight_gradient(ev, labels, sw, spec, acc) if sw_p else None
    residuals = tuple(None if g is None else g.astype(like.dtype) for g, like in
                      ((ev.gW, W), (ev.gb, b), (ev.gX, X), (ev.g_labels, labels), (g_sw, sw)))
    return _package(ev, coef, spec, return_lse, return_predictions), residuals


def _weight_gradient(ev, labels, sw, spec: LossSpec, acc):
    """∂(scalar loss)/∂wₙ from the per-row losses and the value."""
    mask = _rows.counted_rows(labels, spec, acc)
    if spec.reduction == "mean":
        # R = Σ m w ℓ / Σ m w  ⇒  ∂R/∂wₙ = mₙ (ℓₙ − R) / Σ m w
        peak, inverse = _rows.weight_scale(mask * sw.astype(acc))
        return (mask * jnp.where(mask != 0, ev.loss - ev.value, 0) / peak) * inverse
    return jnp.where(mask != 0, mask * ev.loss, 0)


def _loss_bwd(spec, plan, return_lse, return_predictions, residuals, cotangent):
    if return_lse or return_predictions:
        cotangent, *extra = cotangent
        if return_lse and not isinstance(extra[0], SymbolicZero):
            raise TypeError("the returned log-sum-exp is an auxiliary output and is not "
                            "differentiated; use `z_loss` to penalise it.")
    if isinstance(cotangent, SymbolicZero):
        cotangent = jnp.zeros(cotangent.shape, cotangent.dtype)
    if spec.reduction != "none" and not plan.recompute:
        return tuple(None if r is None else (cotangent * r).astype(r.dtype) for r in residuals) + (None, None)
    W, b, X, labels, sw, eps, zeta, lse, weight_part, flags = residuals
    grads = Want(grad_W=flags[0] is not None, grad_X=flags[1] is not None,
                 grad_labels=flags[2] is not None)
    coef = _rows.row_coefficients(labels, sw, spec, lse.dtype)
    ev = _engine.evaluate(W, b, X, labels, coef * cotangent.astype(lse.dtype), eps, zeta, spec,
                          plan, grads, lse=lse)

    def cast(g, like):
        return None if g is None else g.astype(like.dtype)

    g_sw = None
    if weight_part is not None:
        if spec.reduction == "none":  # ∂(wₙmₙℓₙ)/∂wₙ = mₙℓₙ, times the row's cotangent
            mask = _rows.counted_rows(labels, spec, lse.dtype)
            g_sw = cast(jnp.where(mask != 0, mask * weight_part * cotangent, 0), sw)
        else:
            g_sw = cast(cotangent * weight_part, sw)
    return (cast(ev.gW, W), cast(ev.gb, b), cast(ev.gX, X), cast(ev.g_labels, labels), g_sw,
            None, None)


loss.defvjp(_loss_fwd, _loss_bwd, symbolic_zeros=True)


def objective(params: Params, X: Features, labels: Labels, sample_weight: RowValues | None, l2,
              eps, spec: LossSpec, plan: Plan) -> jax.Array:
    r"""The risk :math:`\sum_n c_n \ell_n + \tfrac{\lambda}{2}\lVert W \rVert^2` of validated
    inputs: :func:`loss` plus the penalty, which plain autodiff differentiates."""
    value = loss(params.W, params.b, X, labels, sample_weight, eps, 0.0, spec, plan)
    return value + 0.5 * l2 * jnp.sum(jnp.square(params.W.astype(value.dtype)))


@partial(jax.jit, static_argnames=("spec", "plan"))
def _risk_jit(params, X, labels, sample_weight, l2, eps, *, spec, plan):
    return objective(params, X, labels, sample_weight, l2, eps, spec, plan)


@partial(jax.jit, static_argnames=("spec", "plan"))
def _value_and_grad_jit(params, X, labels, sample_weight, l2, eps, *, spec, plan):
    return jax.value_and_grad(objective)(params, X, labels, sample_weight, l2, eps, spec, plan)


# --- public API ---------------------------------------------------------------------------


def _risk_inputs(params, X, labels, options):
    problem, spec, plan = prepare(params, X, labels, **options)
    return (Params(problem.W, problem.b), problem.X, problem.labels, problem.sample_weight,
            options.get("l2", 0.0), options.get("label_smoothing", 0.0)), dict(spec=spec, plan=plan)


def _options(sample_weight, l2, label_smoothing, ignore_index, check_values, chunk_rows, mesh,
             data_axis, class_axis) -> dict[str, Any]:
    return dict(sample_weight=sample_weight, l2=l2, label_smoothing=label_smoothing,
                ignore_index=ignore_index, check_values=check_values, chunk_rows=chunk_rows,
                mesh=mesh, data_axis=data_axis, class_axis=class_axis)


def risk(
    params: Params | Weights,
    X: Features,
    labels: Labels,
    *,
    sample_weight: RowValues | None = None,
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
                  + \frac{\lambda}{2} \lVert W \rVert^2,

    with the smoothed targets :math:`t_n = (1-\varepsilon) y_n + \varepsilon / K`.

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
      chunk_rows: rows of scores live at a time (static). Default: the rule of
        ``jsoftmax._engine.choose_chunks`` (a budget of f32 scores per chunk, and on a CPU
        cache-sized chunks; the numbers in ``jsoftmax/_rules.json``).
      mesh, data_axis, class_axis: run sharded over a ``jax.sharding.Mesh``: rows over
        ``data_axis``, W's columns over ``class_axis`` (either or both; see ``_mesh``).

    Returns:
      The scalar risk, float32 for 16-bit inputs, else the dtype of ``X``.

    Example:
      >>> import jax.numpy as jnp, jsoftmax
      >>> X = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> float(jsoftmax.risk(jnp.zeros((2, 3)), X, jnp.array([0, 2])))  # log 3
      1.0986123...
    """
    def run(params, X, labels, sample_weight):
        args, statics = _risk_inputs(params, X, labels, _options(
            sample_weight, l2, label_smoothing, ignore_index, check_values, chunk_rows, mesh,
            data_axis, class_axis))
        return _risk_jit(*args, **statics)

    return _mesh.on_auto_axes(run, (params, X, labels, sample_weight), lambda _: P())


def value_and_grad(
    params: Params | Weights,
    X: Features,
    labels: Labels,
    *,
    sample_weight: RowValues | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    check_values: bool = True,
    chunk_rows: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str | None = None,
    class_axis: str | None = None,
) -> tuple[jax.Array, Params | Weights]:
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
    def run(params, X, labels, sample_weight):
        args, statics = _risk_inputs(params, X, labels, _options(
            sample_weight, l2, label_smoothing, ignore_index, check_values, chunk_rows, mesh,
            data_axis, class_axis))
        value, grad = _value_and_grad_jit(*args, **statics)
        return value, grad if isinstance(params, Params) else grad.W

    return _mesh.on_auto_axes(run, (params, X, labels, sample_weight),
                              lambda _: (P(), _like_params(params)))


def objective_hvp(params: Params, V: Params, X: Features, labels: Labels, sample_weight: RowValues | None,
                  l2, eps, spec: LossSpec, plan: Plan) -> Params:
    """The Hessian of :func:`objective` at ``params`` applied to ``V`` (validated inputs), in the
    accumulation dtype."""
    coef = _rows.row_coefficients(labels, sample_weight, spec, accumulation_dtype(X.dtype))
    HW, Hb = _engine.hessian_vector(params.W, params.b, X, labels, coef, V.W, V.b, eps, 0.0, spec, plan)
    return Params(HW + l2 * V.W.astype(HW.dtype), Hb)


def curvature(params: Params, X: Features, labels: Labels, sample_weight: RowValues | None, eps,
              spec: LossSpec) -> tuple[jax.Array, jax.Array]:
    """(P, r): the probabilities (N, K) at ``params`` and the row factors rₙ = cₙΣₖtₙₖ, for
    Hessian-vector products that reuse them (:func:`cached_hvp`): a Newton step applies the
    Hessian at one point many times, and with P kept each product costs two matrix products
    instead of three. Holds N×K numbers: for problems where that fits in memory."""
    acc = accumulation_dtype(X.dtype)
    coef = _rows.row_coefficients(labels, sample_weight, spec, acc)
    P = _engine.all_probabilities(params.W, params.b, X)
    t_sum = _rows.target_sum(labels, spec, jnp.asarray(eps, acc), acc)
    return P, coef if t_sum is None else coef * t_sum


def cached_hvp(P: jax.Array, r: jax.Array, X: Features, V: Params) -> Params:
    """H·V of the loss (no penalty) from :func:`curvature`'s P and r (``docs/derivation.md`` §8)."""
    return Params(*_engine.cached_hessian_vector(P, r, X, V.W, V.b))


@partial(jax.jit, static_argnames=("spec", "plan"))
def _hvp_jit(W, b, X, labels, sample_weight, VW, Vb, l2, eps, *, spec, plan):
    H = objective_hvp(Params(W, b), Params(VW, Vb), X, labels, sample_weight, l2, eps, spec, plan)
    return H.W.astype(W.dtype), None if H.b is None else H.b.astype(W.dtype)


def hvp(
    params: Params | Weights,
    X: Features,
    labels: Labels,
    V: Params | Weights,
    *,
    sample_weight: RowValues | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    check_values: bool = True,
    chunk_rows: int | None = None,
) -> Params | Weights:
    r"""The Hessian of the risk at ``params`` applied to a direction ``V``, in closed form.

    .. math::

        H_W V = X^\top\big(c \odot (\hat Y\odot A - \hat Y \odot \mathrm{rowsum}(\hat Y\odot A))
        \,\textstyle\sum_k T\big) + \lambda V_W, \qquad A = XV_W + V_b

    and :math:`H_b V = \sum_n c_n(\ldots)_n` (``docs/derivation.md`` §8). Computed by row chunks
    like the gradient (no N×K array beyond one chunk): two matrix products per chunk for A and
    the result, plus the scores. Newton-type solvers call it once per inner iteration.

    The arguments other than ``V`` are those of :func:`risk`.

    Args:
      V: the direction, with the structure, shapes and dtype of ``params``.

    Returns:
      H·V in the structure of ``params``.

    Example:
      >>> import jax.numpy as jnp, jsoftmax
      >>> W = jnp.zeros((2, 3)); X = jnp.eye(2); V = jnp.ones((2, 3)).at[0, 0].set(4.0)
      >>> H = jsoftmax.hvp(W, X, jnp.array([0, 1]), V)  # row 0: ½·⅓(a − mean a); row 1: a constant
      >>> (6 * H).round(3)
      Array([[ 2., -1., -1.],
             [ 0.,  0.,  0.]], dtype=float32)
    """
    def run(params, X, labels, V, sample_weight):
        problem, spec, plan = prepare(params, X, labels, sample_weight=sample_weight, l2=l2,
                                      label_smoothing=label_smoothing, ignore_index=ignore_index,
                                      check_values=check_values, chunk_rows=chunk_rows)
        VW, Vb = _validate.check_direction(V, params, problem.W, problem.b)
        HW, Hb = _hvp_jit(problem.W, problem.b, problem.X, problem.labels, problem.sample_weight,
                          VW, Vb, l2, label_smoothing, spec=spec, plan=plan)
        return Params(HW, Hb) if isinstance(params, Params) else HW

    return _mesh.on_auto_axes(run, (params, X, labels, V, sample_weight), lambda _: _like_params(params))


def risk_grad(params: Params | Weights, X: Features, labels: Labels, **options: Any
              ) -> Params | Weights:
    r"""The analytic gradient :math:`X^\top(\mathrm{softmax}(XW + b) - Y)/N + \lambda W`.

    The custom VJP's closed-form expression, never autodiff of the loss. Same arguments as
    :func:`risk`; returns the gradient in the structure of ``params``.
    """
    return value_and_grad(params, X, labels, **options)[1]


def linear_cross_entropy(
    x: Features,
    w: Weights,
    labels: Labels,
    *,
    bias: Bias | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    implementation: str = "auto",
    chunk_size: int | None = None,
    class_chunk_size: int | None = None,
    return_lse: bool = False,
    return_predictions: bool = False,
    return_accuracy: bool = False,
    softcap: float | None = None,
    backward: str = "auto",
    weight_grad_accumulation: str = "auto",
    check_values: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str | None = None,
    class_axis: str | None = None,
) -> jax.Array | tuple[jax.Array, ...]:
    r"""Cross-entropy of the linear head ``x @ w + bias`` without materialising the logits.

    .. math::

        \ell_n = \mathrm{lse}(z_n) \textstyle\sum_k t_{nk} - t_n^\top z_n + \zeta\, \mathrm{lse}(z_n)^2,

    with the scores :math:`z_n = x_n W + b` (or :math:`c\tanh((x_n W + b)/c)` with a soft-cap)
    and the smoothed targets :math:`t_n = (1-\varepsilon) y_n + \varepsilon / K`.

    Args:
      x: (N, D) inputs (e.g. a language model's final hidden states), f32/f64/bf16, or
        (..., D) with leading dimensions such as (batch, time), as optax's losses take them:
        the rows are flattened (free) and per-row outputs come back in the leading shape.
      w: (D, K) head weights, same dtype as ``x``; bias: optional (K,).
      labels: (N,) integer ids in [0, K) (``ignore_index`` rows leave the loss and the count),
        or (N, K) probability rows (which get their gradient, −(1−ε)·log softmax); with
        leading dimensions, ``x.shape[:-1]`` or ``x.shape[:-1] + (K,)``.
      reduction: "mean" over counted rows, "sum", or "none" (per row, 0 on ignored rows). A
        batch in which no row counts (every label ``ignore_index``, as a fully padded
        microbatch) has the loss 0 for every reduction, with zero gradients — never an error,
        eagerly or inside ``jit``.
      label_smoothing: ε in [0, 1). z_loss: ζ ≥ 0, adds ζ·lse² per row (PaLM's z-loss).
      implementation: "auto" or "chunked" (row chunks, class blocks when K is huge, the
        analytic backward), or "reference" (materialised logits, JAX autodiff; the oracle).
      chunk_size: rows per chunk; class_chunk_size: classes per block (online log-sum-exp).
        Default: the rule of ``jsoftmax._engine.choose_chunks`` (``jsoftmax/_rules.json``).
      return_lse: also return the (N,) log-sum-exp (auxiliary; not differentiated).
      return_predictions: also return each row's predicted class, the arg-max of its scores,
        (N,) int32, from the same pass over the logits (first index on ties).
      return_accuracy: also return the accuracy of those predictions against the labels (the
        arg-max of a probability row) over counted rows: the fraction for "mean", the number
        of correct rows for "sum", 1/0 per row (0 on ignored rows) for "none".
      softcap: c > 0 caps the logits at c·tanh(z/c) before the softmax (Gemma 2's soft-cap;
        ``docs/derivation.md`` §10); None (default) leaves them.
      backward: "auto" or "fused" computes every gradient in the forward pass over each chunk
        (Liger's form: three matrix products); "recompute" saves the (N,) log-sum-exp and
        recomputes the scores in the backward (cut-cross-entropy's form: four products, and no
        gradient held between the passes). "none" reductions always recompute.
      weight_grad_accumulation: for 16-bit inputs, the dtype dW accumulates in over row chunks:
        "float32", "input" (the inputs' dtype, as Liger does; half the memory, one rounding per
        chunk), or "auto": float32 while D×K×4 bytes fit the budget in
        ``jsoftmax/_rules.json``, the inputs' dtype beyond.
      check_values: label-range and finiteness checks (see :func:`jsoftmax.risk`).
      mesh, data_axis, class_axis: shard rows over ``data_axis`` and W's columns over
        ``class_axis`` of a ``jax.sharding.Mesh`` (chunked implementation only).

    Returns:
      The loss (a scalar, or (N,) — the leading shape of ``x`` — with ``reduction="none"``),
      float32 for 16-bit inputs. With
      any ``return_*`` flag, a tuple ``(loss, lse, predictions, accuracy)`` holding only the
      outputs asked for, in that order. Gradients with respect to x, w and bias come back in
      their own dtypes.

    Example:
      >>> import jax, jax.numpy as jnp, jsoftmax
      >>> x = jnp.ones((4, 3)); w = jnp.zeros((3, 5)); y = jnp.array([0, 1, 2, -100])
      >>> round(float(jsoftmax.linear_cross_entropy(x, w, y)), 5)  # log 5 over the 3 counted rows
      1.60944
      >>> jax.grad(jsoftmax.linear_cross_entropy, argnums=1)(x, w, y).shape
      (3, 5)
      >>> loss, accuracy = jsoftmax.linear_cross_entropy(x, w, y, return_accuracy=True)
      >>> float(accuracy)  # all scores tie: every row predicts class 0; one counted row has it
      0.3333...
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {', '.join(map(repr, IMPLEMENTATIONS))}; "
                         f"got {implementation!r}.")
    if mesh is not None and implementation == "reference":
        raise ValueError("`mesh` needs implementation='chunked' or 'auto'.")
    chunk_size = _validate.check_chunk(chunk_size, "chunk_size")
    flags = tuple(_validate.check_flag(value, name) for value, name in (
        (return_lse, "return_lse"), (return_predictions, "return_predictions"),
        (return_accuracy, "return_accuracy")))

    def run(x, w, labels, bias):
        x, labels, lead = _rows_of(x, labels)
        problem, spec, plan = prepare(
            Params(w, bias), x, labels, label_smoothing=label_smoothing, z_loss=z_loss,
            ignore_index=ignore_index, reduction=reduction, check_values=check_values,
            chunk_rows=chunk_size, class_chunk=class_chunk_size, mesh=mesh, data_axis=data_axis,
            class_axis=class_axis, softcap=softcap, backward=backward,
            weight_grad_accumulation=weight_grad_accumulation, names=_validate.HEAD_NAMES,
            require_counted=False)
        args = (problem.W, problem.b, problem.X, problem.labels, label_smoothing, z_loss)
        return _head_jit(*args, spec, None if implementation == "reference" else plan, flags, lead)

    def out_sharding(_):
        rows = _mesh.row_spec(x)  # per-row outputs are laid out like x's rows
        value = rows if reduction == "none" else P()
        extras = (rows,) * (flags[0] + flags[1]) + ((rows if reduction == "none" else P()),) * flags[2]
        return (value, *extras) if any(flags) else value

    return _mesh.on_auto_axes(run, (x, w, labels, bias), out_sharding)


def _rows_of(x, labels):
    """``x`` (..., D) and its labels as rows: (N, D) and (N,) or (N, K), and the leading shape
    to give per-row outputs back (None when ``x`` is already 2-D)."""
    shape = tuple(np.shape(x))
    if len(shape) <= 2:
        return x, labels, None
    lead, label_shape = shape[:-1], tuple(np.shape(labels))
    if label_shape[:len(lead)] != lead or len(label_shape) not in (len(lead), len(lead) + 1):
        raise ValueError(f"`labels` must have shape {lead} (class ids) or {lead} + (K,) (probability "
                         f"rows) to match `x` of shape {shape}; got {label_shape}.")
    n = math.prod(lead)
    rows = (n, *label_shape[len(lead):])
    reshape = np.reshape if isinstance(x, np.ndarray) else jnp.reshape
    x = reshape(x, (n, shape[-1]))
    labels = (np.reshape if isinstance(labels, np.ndarray) else jnp.reshape)(labels, rows)
    return x, labels, lead


@partial(jax.jit, static_argnums=(6, 7, 8, 9))
def _head_jit(W, b, X, labels, eps, zeta, spec: LossSpec, plan: Plan | None,
              flags: tuple[bool, bool, bool], lead: tuple[int, ...] | None = None):
    """The LM-head loss and the auxiliary outputs ``flags`` asks for (lse, predictions,
    accuracy); ``plan=None`` runs the reference (materialised logits, JAX's autodiff). Per-row
    outputs take the shape ``lead`` when given."""
    out = _head_outputs(W, b, X, labels, eps, zeta, spec, plan, flags)
    if lead is None:
        return out
    per_row = lambda a: a.reshape(lead) if a.ndim == 1 else a  # noqa: E731
    return tuple(map(per_row, out)) if isinstance(out, tuple) else per_row(out)


def _head_outputs(W, b, X, labels, eps, zeta, spec: LossSpec, plan: Plan | None,
                  flags: tuple[bool, bool, bool]):
    return_lse, return_predictions, return_accuracy = flags
    need_predictions = return_predictions or return_accuracy
    if plan is None:
        out = _reference_outputs(W, b, X, labels, eps, zeta, spec, return_lse, need_predictions)
    else:
        out = loss(W, b, X, labels, None, eps, zeta, spec, plan, return_lse, need_predictions)
    if not (return_lse or need_predictions):
        return out
    value, *extras = out  # (lse,) and/or (predictions,)
    predicted = extras.pop() if need_predictions else None
    if return_predictions:
        extras.append(predicted)
    if return_accuracy:
        extras.append(_accuracy(predicted, labels, spec))
    return (value, *extras)


def _accuracy(predicted, labels, spec: LossSpec):
    """Correct predictions over counted rows, reduced like the loss."""
    target = jnp.argmax(labels, axis=-1) if spec.soft else labels
    counted = _rows.counted_rows(labels, spec, jnp.float32)
    hit = (predicted == target).astype(jnp.float32) * counted
    if spec.reduction == "none":
        return hit
    total = jnp.sum(hit)
    return total / jnp.maximum(jnp.sum(counted), 1) if spec.reduction == "mean" else total


def _reference_outputs(W, b, X, labels, eps, zeta, spec: LossSpec, return_lse: bool,
                       return_predictions: bool):
    """The plain definition with materialised logits, differentiated by JAX's own autodiff."""
    acc = accumulation_dtype(X.dtype)
    out = reference_loss(X, W, b, labels, label_smoothing=eps, z_loss=zeta,
                         ignore_index=spec.ignore_index, reduction=spec.reduction,
                         accumulate=acc, softcap=spec.softcap)
    if not (return_lse or return_predictions):
        return out
    z = jax.lax.stop_gradient(_rows.soft_cap(_engine.scores(W, b, X), spec.softcap))
    extras = (jax.nn.logsumexp(z, axis=-1),) * return_lse
    extras += (jnp.argmax(z, axis=-1).astype(jnp.int32),) * return_predictions
    return (out, *extras)


@jax.jit
def _proba_jit(W, b, X):
    return _engine.all_probabilities(W, b, X)


@jax.jit
def _predict_jit(W, b, X):
    return _engine.all_predictions(W, b, X)


def _features(params, X, in_place: bool = False, checked: bool = False):
    """Validated W, b and X for prediction; a sparse X as one chunk of rows (the (N, K) output
    is as large as its scores), without the transposed copy a gradient needs; with
    ``in_place`` a large NumPy X read where it lies (``_inplace``). NaN rows are refused, as a
    fit refuses them, unless the caller ``checked`` X's values already."""
    W, b, X = _validate.prepare_features(params, X, keep_host=in_place)
    if isinstance(X, _sparse.CSR):
        if not checked:
            _validate.check_finite_features(X)
        return W, b, _sparse.chunked_rows(X, X.shape[0], transposed=False, in_place=in_place)
    if isinstance(X, np.ndarray):
        rows, _ = _engine.choose_chunks(X.shape[0], W.shape[1], d=X.shape[1], itemsize=X.dtype.itemsize)
        X = _inplace.place(X, rows)
    if not checked:
        _validate.check_finite_features(X)
    return W, b, X


def host_predictions(params: Params | Weights, X: Features, *, probabilities: bool) -> np.ndarray:
    """:func:`predict_proba` (or :func:`predict`) as a NumPy array, for the estimators, which wait
    for it anyway and have checked X's values (scikit-learn's ``validate_data``): a large NumPy
    X is then read in place instead of copied to the device, in one pass (no second pass for
    NaN), and the program comes from ``_aot``'s store."""
    function = _proba_jit if probabilities else _predict_jit
    return np.asarray(_aot.call(function, _features(params, X, in_place=True, checked=True), {}))


def predict_proba(params: Params | Weights, X: Features) -> jax.Array:
    """Class probabilities softmax(XW + b), shape (N, K) (float32 for 16-bit inputs). X dense
    or sparse (scipy.sparse, BCOO, BCSR)."""
    return _mesh.on_auto_axes(lambda p, X: _proba_jit(*_features(p, X)), (params, X),
                              lambda _: P(*_mesh.row_spec(X), None))


def predict(params: Params | Weights, X: Features) -> jax.Array:
    """Most probable class id per row, argmax of XW + b, shape (N,). X dense or sparse."""
    return _mesh.on_auto_axes(lambda p, X: _predict_jit(*_features(p, X)), (params, X),
                              lambda _: _mesh.row_spec(X))


def _like_params(params) -> Any:
    """PartitionSpecs of a gradient or H·V shaped like ``params``, from the params' types."""
    if isinstance(params, Params):
        return Params(_mesh.spec_of(params.W), None if params.b is None else _mesh.spec_of(params.b))
    return _mesh.spec_of(params)
