"""Training with Optax, driven by the analytic gradient.

Two modes, both compiled end to end:

* **Full batch** (``batch_size=None``): the optimizer runs inside one ``lax.while_loop`` until
  the gradient's largest entry is at most ``tol`` or ``max_iter`` iterations. With an optimizer
  that carries a line search (``optax.lbfgs``), the loop passes it the objective as
  ``value_fn`` and reuses the value and gradient the line search already computed
  (``optax.value_and_grad_from_state``). A callback or checkpoints split the loop into
  segments of the same compiled program (nothing recompiles).
* **Minibatch** (``batch_size=B``): one epoch is one ``lax.scan`` over shuffled batches (a fresh
  permutation per epoch from ``seed``); Python only loops over epochs, for validation, early
  stopping, callbacks and checkpoints.

The objective is :func:`jsoftmax.risk` (a custom VJP), so ``jax.value_and_grad`` of it — and
every gradient the optimizer or line search asks for — is the analytic gradient, computed in
the same pass as the value.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from . import _aot, _api, _checkpoint, _engine, _solvers, _sparse, _validate
from ._types import Features, Labels, LossSpec, Params, Plan, RowValues, Weights, accumulation_dtype


SOLVERS = ("lbfgs", "newton-cg")
# Newton-CG's diagonal preconditioner: where it runs and its mix α (measured; see _rules.json).
PRECONDITION = _engine.RULES["newton_preconditioner"]


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      params: the fitted parameters, in the structure given to :func:`fit`.
      history: ``"loss"`` per iteration (full batch) or per epoch (mean over its batches);
        ``"val_loss"``/``"val_accuracy"`` per epoch when validation data was given.
      n_iter: optimizer steps taken in total.
      n_epochs: epochs run (0 in full-batch mode).
      converged: the gradient's largest entry reached ``tol``, or early stopping fired.
      grad_norm: largest absolute entry of the full-data gradient at the returned params.
      stop_reason: ``"gtol"``, ``"max_iter"``, ``"max_epochs"``, ``"early_stopping"``,
        ``"stalled"`` (Newton-CG: the quadratic model predicts no further decrease, the
        gradient being at rounding level above ``tol``), or ``"diverged"`` when the loss or the gradient became NaN or infinite (the params of the
        last step are returned; ``converged`` is False).
    """

    params: Params | jax.Array
    history: dict[str, list[float]]
    n_iter: int
    n_epochs: int
    converged: bool
    grad_norm: float
    stop_reason: str


def _positive_int(value: Any, name: str, allow_none: bool = False, low: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"`{name}` must be {kind}{' or None' if allow_none else ''}; got {value!r}.")
    return int(value)


def _uses_linesearch(state) -> bool:
    """True for optimizers (like optax.lbfgs) whose state stores the value and gradient.

    Decided from the state's structure, which is static, so it costs nothing under jit.
    """
    return optax.tree.get(state, "value", None) is not None


def _host_inf_norm(tree) -> float:
    """max |leaf| over a small pytree (a gradient), on the host: no eager JAX program."""
    # np.max, not Python's max: a NaN must win (a diverged fit is reported as such).
    return float(np.max([np.max(np.abs(np.asarray(leaf)), initial=0.0) for leaf in jax.tree_util.tree_leaves(tree)]))


def _inf_norm(tree) -> jax.Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


def _in_dtype(params: Params, dtype) -> Params:
    """The (float32 master) params in the data's dtype; a no-op when they already match."""
    return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)


class Affine(NamedTuple):
    """Features standardised as (X − mean)·inv_scale, folded into the weights (never formed)."""

    mean: jax.Array  # (D,)
    inv_scale: jax.Array  # (D,)


def on_raw_features(params: Params, affine: Affine | None) -> Params:
    r"""Parameters for raw X equal to ``params`` for standardised X:
    :math:`((X-\mu)/\sigma)W + b = X(W/\sigma) + (b - (\mu/\sigma)W)` (linear in the params)."""
    if affine is None:
        return params
    W = params.W * affine.inv_scale[:, None].astype(params.W.dtype)
    shift = (affine.mean * affine.inv_scale).astype(params.W.dtype) @ params.W
    return Params(W, -shift if params.b is None else params.b - shift)


def _objective(data, spec: LossSpec, plan: Plan):
    """The risk as a function of the params; ``data = (X, labels, weights, l2, smoothing,
    affine)``. With ``affine`` the params are those of standardised features, mapped onto the
    raw X by :func:`on_raw_features` (autodiff carries the gradient back through the map), and
    the penalty is on the standardised W, as if the scaled copy of X existed.

    16-bit data is trained with float32 master params (and so float32 optimizer state): the
    params are cast to the data's dtype for the risk, and its gradient comes back in float32.
    """
    X, labels, sample_weight, l2, smoothing, affine = data

    def objective(params: Params):
        params = _in_dtype(params, X.dtype)
        if affine is None:
            return _api.objective(params, X, labels, sample_weight, l2, smoothing, spec, plan)
        value = _api.objective(on_raw_features(params, affine), X, labels, sample_weight, 0.0,
                               smoothing, spec, plan)
        return value + 0.5 * l2 * jnp.sum(jnp.square(params.W.astype(value.dtype)))

    return objective


def _update(optimizer, objective, grad, state, params, value):
    if _uses_linesearch(state):
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=objective)
    else:
        updates, state = optimizer.update(grad, state, params)
    return optax.apply_updates(params, updates), state


# --- Full batch ---------------------------------------------------------------------------


def _first_carry(params, data, spec, plan, max_iter, init_state):
    """A full-batch loop's initial carry: (iteration, params, solver state, value, grad, loss
    history); ``init_state(params, grad, value)`` gives the solver's state."""
    value, grad = jax.value_and_grad(_objective(data, spec, plan))(params)
    losses = jnp.full((max_iter + 1,), jnp.nan, value.dtype).at[0].set(value)
    return jnp.asarray(0), params, init_state(params, grad, value), value, grad, losses


def _iterate(carry, limit, tol, step):
    """``step(params, state, value, grad)`` until ``it == limit``, max|grad| <= tol (a NaN
    gradient also stops, since NaN > tol is false) or the state says ``stalled``; one
    compiled while_loop that records the loss history."""

    def cond(carry):
        it, _, state, _, grad, _ = carry
        going = (it < limit) & (_inf_norm(grad) > tol)
        stalled = getattr(state, "stalled", None)  # optax's states have none
        return going if stalled is None else going & ~stalled

    def body(carry):
        it, params, state, value, grad, losses = carry
        params, state, value, grad = step(params, state, value, grad)
        return it + 1, params, state, value, grad, losses.at[it + 1].set(value)

    return lax.while_loop(cond, body, carry)


@partial(jax.jit, static_argnames=("optimizer", "spec", "plan", "max_iter"))
def _full_batch_start(params, data, *, optimizer, spec, plan, max_iter):
    return _first_carry(params, data, spec, plan, max_iter, lambda p, g, v: optimizer.init(p))


@partial(jax.jit, static_argnames=("optimizer", "spec", "plan"))
def _full_batch_segment(carry, limit, tol, data, *, optimizer, spec, plan):
    """Iterate until ``it == limit`` or max|grad| <= tol (a NaN gradient also ends the loop,
    since NaN > tol is false); one compiled while_loop."""
    objective = _objective(data, spec, plan)
    linesearch = _uses_linesearch(carry[2])
    value_and_grad = (
        optax.value_and_grad_from_state(objective) if linesearch else jax.value_and_grad(objective)
    )

    def step(params, state, value, grad):
        params, state = _update(optimizer, objective, grad, state, params, value)
        value, grad = value_and_grad(params, state=state) if linesearch else value_and_grad(params)
        return params, state, value, grad

    return _iterate(carry, limit, tol, step)


@partial(jax.jit, static_argnames=("spec", "plan", "max_iter"))
def _newton_start(params, data, *, spec, plan, max_iter):
    return _first_carry(params, data, spec, plan, max_iter, lambda p, g, v: _solvers.init_state(g, v.dtype))


# The carry is donated: each segment's output replaces its input in place (one copy of the
# params, gradient and solver state instead of two; _fit_full_batch never reuses a carry).
@partial(jax.jit, static_argnames=("spec", "plan", "max_cg"), donate_argnums=0)
def _newton_segment(carry, limit, tol, data, *, spec, plan, max_cg):
    """Trust-region Newton-CG iterations until ``it == limit``, max|grad| <= tol, or the model
    predicts no further decrease; one compiled while_loop (see ``_solvers``)."""
    X, labels, sample_weight, l2, smoothing, affine = data
    value_and_grad = jax.value_and_grad(_objective(data, spec, plan))

    # Keep the probabilities for the CG steps of an outer iteration when N×K fits the budget.
    n_classes = carry[1].W.shape[1]
    keep = X.shape[0] * n_classes * jnp.dtype(accumulation_dtype(X.dtype)).itemsize <= CURVATURE_BYTES

    def make_hvp(params):
        params = _in_dtype(params, X.dtype)
        raw, transpose = jax.vjp(lambda q: on_raw_features(q, affine), params)
        inverse = None  # M⁻¹ of the preconditioner
        if keep:
            P, r = _api.curvature(raw, X, labels, sample_weight, smoothing, spec)
            loss_hvp = lambda V: _api.cached_hvp(P, r, X, V)  # noqa: E731
            if PRECONDITION["sparse" if isinstance(X, _sparse.SparseRows) else "dense"]:
                inverse = _preconditioner(P, r, X, affine, l2, params)
        else:
            loss_hvp = lambda V: _api.objective_hvp(raw, V, X, labels, sample_weight, 0.0,  # noqa: E731
                                                    smoothing, spec, plan)

        def hvp(V):
            # H = Jᵀ H_raw J for the linear map J = on_raw_features (identity without affine);
            # the penalty contributes λV on the (standardised) weights.
            H = loss_hvp(on_raw_features(_in_dtype(V, X.dtype), affine))
            (H,) = transpose(jax.tree_util.tree_map(lambda h, q: h.astype(q.dtype), H, raw))
            H = jax.tree_util.tree_map(lambda h, v: h.astype(v.dtype), H, V)
            return H._replace(W=H.W + l2 * V.W)

        return hvp, inverse

    return _iterate(carry, limit, tol, partial(_solvers.newton_step, value_and_grad, make_hvp, max_cg=max_cg))


def _preconditioner(P, r, X, affine: Affine | None, l2, params: Params) -> Params:
    """M⁻¹ of Newton-CG's diagonal preconditioner M = (1 − α)·λ + α·diag(H) (liblinear's mix of the
    identity, here scaled by the penalty λ, and the Hessian's diagonal; α = ``PRECONDITION["mix"]``).
    The diagonal is the raw features' (``_engine.hessian_diagonal``) scaled by σ⁻² for
    standardised W; centring's cross terms are left out: any positive M gives the same
    solution, only the number of CG steps depends on it. Without a penalty λ is replaced by
    the diagonal's mean."""
    dW, db = _engine.hessian_diagonal(P, r, X)
    if affine is not None:
        dW = dW * jnp.square(affine.inv_scale.astype(dW.dtype))[:, None]
    base = jnp.where(l2 > 0, l2, (jnp.sum(dW) + jnp.sum(db)) / (dW.size + db.size)).astype(dW.dtype)
    base = jnp.where(base > 0, base, 1)
    mix = PRECONDITION["mix"]
    W = (1 / ((1 - mix) * base + mix * (dW + l2))).astype(params.W.dtype)
    b = None if params.b is None else (1 / ((1 - mix) * base + mix * db)).astype(params.b.dtype)
    # The barrier keeps XLA from rewriting a / M⁻¹ as a · M, which would keep M as well.
    return lax.optimization_barrier(Params(W, b))


@partial(jax.jit, static_argnames=("spec", "plan", "max_iter"))
def _lbfgs_start(params, data, *, spec, plan, max_iter):
    return _first_carry(params, data, spec, plan, max_iter, lambda p, g, v: _solvers.lbfgs_init(g, v.dtype))


@partial(jax.jit, static_argnames=("spec", "plan"), donate_argnums=0)
def _lbfgs_segment(carry, limit, tol, data, *, spec, plan):
    """Lean L-BFGS iterations until ``it == limit``, max|grad| <= tol, or no step is found."""
    value_and_grad = jax.value_and_grad(_objective(data, spec, plan))
    return _iterate(carry, limit, tol, partial(_solvers.lbfgs_step, value_and_grad))


# --- Minibatch ----------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("optimizer", "spec", "plan", "batch_size"))
def _epoch(params, state, key, data, *, optimizer, spec, plan, batch_size):
    """One epoch: a fresh permutation, then a lax.scan of optimizer steps over its batches."""
    X, labels, sample_weight, l2, smoothing, affine = data
    n = X.shape[0]
    steps = math.ceil(n / batch_size)
    # Pad the permutation to whole batches with weight-0 rows: every sample is used each epoch.
    order = jnp.concatenate([jax.random.permutation(key, n), jnp.zeros(steps * batch_size - n, int)])
    real = jnp.arange(steps * batch_size) < n
    weights = real.astype(X.dtype) if sample_weight is None else jnp.where(real, sample_weight[order], 0)
    batches = (order.reshape(steps, batch_size), weights.reshape(steps, batch_size))

    def step(carry, batch):
        params, state = carry
        rows, w = batch
        objective = _objective((X[rows], labels[rows], w, l2, smoothing, affine), spec, plan)
        value, grad = jax.value_and_grad(objective)(params)
        params, state = _update(optimizer, objective, grad, state, params, value)
        return (params, state), value

    (params, state), losses = lax.scan(step, (params, state), batches)
    return params, state, losses


@partial(jax.jit, static_argnames=("spec", "plan"))
def _metrics(params, data, *, spec, plan):
    """(risk without penalty, accuracy over counted rows) on a data set, from one fused pass
    (the predictions come with the loss; no second product over X, dense or sparse)."""
    X, labels, sample_weight, _, smoothing, affine = data
    params = on_raw_features(_in_dtype(params, X.dtype), affine)
    loss, predicted = _api.loss(params.W, params.b, X, labels, sample_weight, smoothing, 0.0, spec, plan,
                                return_predictions=True)
    if spec.soft:
        correct, counted = predicted == jnp.argmax(labels, axis=1), jnp.ones_like(predicted, bool)
    else:
        correct, counted = predicted == labels, labels != spec.ignore_index
    return loss, jnp.sum(correct & counted) / jnp.sum(counted)


@partial(jax.jit, static_argnames=("spec", "plan"))
def _grad_inf_norm(params, data, *, spec, plan):
    return _inf_norm(jax.grad(_objective(data, spec, plan))(params))


# --- Public entry point -------------------------------------------------------------------


def fit(
    params: Params | Weights,
    X: Features,
    labels: Labels,
    optimizer: optax.GradientTransformation | None = None,
    *,
    solver: str | None = None,
    sample_weight: RowValues | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    batch_size: int | None = None,
    max_iter: int = 1000,
    max_epochs: int = 100,
    tol: float = 1e-6,
    validation_data: tuple[jax.Array, jax.Array] | None = None,
    patience: int | None = None,
    seed: int = 0,
    callback: Callable[[dict[str, Any]], None] | None = None,
    callback_every: int = 50,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str | None = None,
    class_axis: str | None = None,
    feature_mean: jax.Array | None = None,
    feature_scale: jax.Array | None = None,
) -> FitResult:
    r"""Minimise :func:`jsoftmax.risk` with an Optax optimizer and the analytic gradient.

    Args:
      params: initial :class:`Params` or bare ``W``; the result has the same structure.
      X, labels, sample_weight, l2, label_smoothing, ignore_index: as in :func:`jsoftmax.risk`.
        A large NumPy X is read by a CPU device where it lies, not copied (full-batch fits;
        ``jsoftmax._inplace``): it must not change while the fit runs.
      optimizer: any ``optax.GradientTransformation`` (schedules included). ``optax.lbfgs()``
        gets the objective as ``value_fn`` for its line search.
      solver: instead of ``optimizer``, a built-in full-batch solver: ``"lbfgs"`` (a lean
        L-BFGS with a backtracking line search, one evaluation per iteration; see
        ``jsoftmax._solvers``) or ``"newton-cg"`` (trust-region Newton-CG on the analytic
        Hessian-vector product, liblinear's TRON). Give one of the two; neither means "lbfgs".
      batch_size: ``None`` for full-batch mode; otherwise rows per minibatch.
      max_iter: full-batch iteration limit. max_epochs: minibatch epoch limit. 0 returns the
        start, with its gradient norm.
      tol: stop when ``max |dR/dθ| <= tol`` (full batch; checked at the end of minibatch runs).
      validation_data: ``(X_val, labels_val)`` evaluated after every epoch (minibatch).
      patience: stop after this many epochs without improvement of the validation loss (or
        of the training loss without validation data); the best params are returned.
      seed: seeds each epoch's shuffle (``fold_in(key(seed), epoch)``).
      callback: called with a dict of progress (iteration or epoch, loss, ...) after every
        epoch, or every ``callback_every`` full-batch iterations.
      checkpoint_dir: save the full training state atomically every ``checkpoint_every``
        epochs (minibatch) or iterations (full batch); ``resume=True`` continues from the
        newest checkpoint there (``FileNotFoundError`` if there is none).
      mesh, data_axis, class_axis: train sharded over a ``jax.sharding.Mesh``: rows over
        ``data_axis`` (each step's gradient is all-reduced), W's columns over ``class_axis``.
        Works across processes after ``jax.distributed.initialize`` with global arrays.
      feature_mean, feature_scale: (D,) each: fit as if on (X − mean)/scale, without forming
        it (folded into the weights; ``docs/derivation.md`` §9); the returned params are for
        the standardised features and ``l2`` penalises those weights.

    Returns:
      A :class:`FitResult`.

    Example:
      >>> import jax.numpy as jnp, optax, jsoftmax
      >>> X = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
      >>> y = jnp.array([0, 1, 1, 0])
      >>> result = jsoftmax.fit(jsoftmax.Params(jnp.zeros((2, 2)), jnp.zeros(2)), X, y,
      ...                       optax.lbfgs(), l2=0.1, tol=1e-5)
      >>> result.converged, result.stop_reason
      (True, 'gtol')
    """
    # A full-batch fit blocks until it ends, so a large NumPy X is read in place (_inplace).
    problem, spec, plan = _api.prepare(params, X, labels, sample_weight=sample_weight, l2=l2,
                                       label_smoothing=label_smoothing, ignore_index=ignore_index,
                                       mesh=mesh, data_axis=data_axis, class_axis=class_axis,
                                       in_place=batch_size is None)
    batch_size = _positive_int(batch_size, "batch_size", allow_none=True)
    if optimizer is not None and solver is not None:
        raise ValueError("give either `optimizer` (an optax transformation) or `solver`, not both.")
    if solver is None and optimizer is None:
        solver = "lbfgs"
    if solver is not None:
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(map(repr, SOLVERS))} "
                             "or pass an optax transformation as `optimizer`.")
        if batch_size is not None:
            raise ValueError(f"solver={solver!r} is full-batch: set batch_size=None, or pass an optax "
                             "optimizer (e.g. optax.adam) for minibatches.")
    if optimizer is not None and not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation; got {type(optimizer).__name__}."
        )
    max_iter = _positive_int(max_iter, "max_iter", low=0)  # 0: the start, evaluated
    max_epochs = _positive_int(max_epochs, "max_epochs", low=0)
    patience = _positive_int(patience, "patience", allow_none=True)
    callback_every = _positive_int(callback_every, "callback_every")
    checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
    if not (isinstance(tol, numbers.Real) and tol >= 0):
        raise ValueError(f"`tol` must be a non-negative number; got {tol!r}.")
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`.")

    W, b, X, labels, sample_weight, soft = problem
    if isinstance(X, _sparse.SparseRows):
        if batch_size is not None:
            raise ValueError("`batch_size` (minibatches) is not supported for sparse X; use a "
                             "full-batch solver ('lbfgs', 'newton-cg') or an optax optimizer without it.")
        if mesh is not None and solver == "newton-cg":
            raise ValueError("solver='newton-cg' is not supported for a sparse X sharded over a `mesh`; "
                             "use solver='lbfgs'.")
    if batch_size is not None:  # each step's plan is for one batch of rows
        plan = _engine.make_plan(min(batch_size, X.shape[0]), *W.shape, mesh=plan.mesh,
                                 data_axis=data_axis, class_axis=class_axis,
                                 itemsize=np.dtype(X.dtype).itemsize)
    if mesh is not None and batch_size is not None and data_axis is not None and batch_size % mesh.shape[data_axis]:
        raise ValueError(f"`batch_size`={batch_size} must be a multiple of the {data_axis!r} axis size "
                         f"{mesh.shape[data_axis]}.")
    affine = _affine(feature_mean, feature_scale, X)
    data = (X, labels, sample_weight, l2, label_smoothing, affine)
    # 16-bit params train as float32 masters (see _objective) and come back in their dtype.
    start = _in_dtype(Params(W, b), accumulation_dtype(W.dtype))
    validation = None
    if validation_data is not None:
        if not (isinstance(validation_data, tuple) and len(validation_data) == 2):
            raise TypeError("`validation_data` must be a tuple (X_val, labels_val).")
        # Validated, planned and (a sparse X) laid out as the training data are.
        vproblem, _, validation_plan = _api.prepare(Params(W, b), validation_data[0], validation_data[1],
                                                    label_smoothing=label_smoothing, ignore_index=ignore_index)
        if vproblem.soft != soft:
            raise TypeError("`validation_data` labels must be of the same kind (ids or rows) as `labels`.")
        validation = (vproblem.X, vproblem.labels, None, 0.0, label_smoothing, affine)

    statics = dict(optimizer=optimizer, spec=spec, plan=plan) if solver is None else dict(spec=spec, plan=plan)
    checkpoints = None
    if checkpoint_dir is not None:
        # What the state was trained on: resuming on other data or options is refused.
        # Every option that changes the objective or the run's path, each by value (an optax
        # transformation by what its functions close over: its hyperparameters and schedules).
        fingerprint = _checkpoint.fingerprint(
            (X, labels, sample_weight) + (() if affine is None else tuple(affine))
            + (() if validation is None else validation[:2]),
            {"l2": _checkpoint.describe(l2), "label_smoothing": _checkpoint.describe(label_smoothing),
             "ignore_index": ignore_index, "batch_size": batch_size,
             "seed": seed if batch_size is not None else None, "patience": patience,
             "params": [list(W.shape), None if b is None else list(b.shape), jnp.dtype(W.dtype).name],
             "solver": solver, "optimizer": None if optimizer is None else _checkpoint.describe(optimizer),
             "standardized": affine is not None, "validation": validation is not None})
        checkpoints = _Checkpoints(checkpoint_dir, checkpoint_every, fingerprint)
    if solver is not None or batch_size is None:  # full batch: a compiled start, then segments
        # (start, its static arguments), (segment, its static arguments): run through _aot.
        segment_statics = dict(statics)
        if solver == "newton-cg":
            segment_statics["max_cg"] = _max_cg(W.size + (0 if b is None else b.size))
        functions = {"lbfgs": (_lbfgs_start, _lbfgs_segment), "newton-cg": (_newton_start, _newton_segment),
                     None: (_full_batch_start, _full_batch_segment)}[solver]
        steps = ((functions[0], statics), (functions[1], segment_statics))
        run = _fit_full_batch(start, data, tol, max_iter, steps, callback, callback_every,
                              checkpoints, resume)
    else:
        run = _fit_minibatch(start, data, validation, min(batch_size, X.shape[0]), max_epochs,
                             patience, seed, statics, callback, checkpoints, resume,
                             validation_plan if validation is not None else None)
    fitted, history, n_iter, n_epochs, stop_reason, grad_norm = run
    if grad_norm is None:
        full_plan = _engine.make_plan(X.shape[0], *W.shape, mesh=plan.mesh, data_axis=data_axis,
                                      class_axis=class_axis, itemsize=np.dtype(X.dtype).itemsize)
        grad_norm = float(_grad_inf_norm(fitted, data, spec=spec, plan=full_plan))
    if not math.isfinite(grad_norm):
        stop_reason = "diverged"
    elif stop_reason not in ("gtol", "early_stopping", "diverged") and grad_norm <= tol:
        stop_reason = "gtol"
    fitted = _in_dtype(fitted, W.dtype)
    out = fitted if isinstance(params, Params) else fitted.W
    return FitResult(out, history, n_iter, n_epochs, stop_reason in ("gtol", "early_stopping"),
                     grad_norm, stop_reason)


def _affine(mean, scale, X) -> Affine | None:
    if mean is None and scale is None:
        return None
    d = X.shape[1]
    values = []
    for name, value in (("feature_mean", mean), ("feature_scale", scale)):
        if value is None:
            value = np.zeros(d) if name == "feature_mean" else np.ones(d)
        value = np.asarray(value, np.float64)
        if value.shape != (d,) or not np.all(np.isfinite(value)):
            raise ValueError(f"`{name}` must be {d} finite numbers (one per feature); got shape {value.shape}.")
        values.append(value)
    if np.any(values[1] <= 0):
        raise ValueError("`feature_scale` must be positive (it divides the features).")
    dtype = accumulation_dtype(X.dtype)
    return Affine(jnp.asarray(values[0], dtype), jnp.asarray(1.0 / values[1], dtype))


class _Checkpoints(NamedTuple):
    folder: str
    every: int
    fingerprint: str

    def save(self, step: int, state, meta: dict) -> None:
        _checkpoint.save_checkpoint(self.folder, step, state, dict(meta, fingerprint=self.fingerprint),
                                    run=_checkpoint.run_id(self.fingerprint))

    def resume(self, like):
        """This run's newest checkpoint: its state (in the structure of ``like``) and metadata."""
        loaded = _checkpoint.load_latest_checkpoint(self.folder, like, run=_checkpoint.run_id(self.fingerprint),
                                                    fingerprint=self.fingerprint)
        if loaded is None:
            raise FileNotFoundError(f"`resume=True`: no checkpoint found in {self.folder}")
        tree, meta = loaded
        if meta.get("fingerprint") != self.fingerprint:  # (a 64-bit prefix shared by chance)
            raise _checkpoint.CheckpointMismatchError(
                f"the checkpoint in {self.folder} was written for other data or options: resuming "
                "would continue a different problem. Use another folder, or resume=False.")
        return jax.tree_util.tree_map(jnp.asarray, tree), meta


CURVATURE_BYTES = 256 * 2**20  # keep N×K probabilities across CG steps up to this size


def _max_cg(n_params: int) -> int:
    """CG iterations per Newton step: enough to converge on small problems, bounded on large."""
    return int(min(max(n_params, 10), 250))


def _fit_full_batch(start, data, tol, max_iter, steps, callback, callback_every, checkpoints,
                    resume):
    """Drive a full-batch loop in segments for callbacks and checkpoints; ``steps`` = its jitted
    start and segment functions, each with its static arguments (called through ``_aot``:
    loaded, not traced, in a process after the first). The carry is (it, params, state,
    value, grad, losses)."""
    (start_fn, start_statics), (segment_fn, statics) = steps
    carry = _aot.call(start_fn, (start, data), {**start_statics, "max_iter": max_iter})
    if resume:
        # The state without the loss buffer (its length depends on max_iter); history in meta.
        state, meta = checkpoints.resume(carry[:5])
        done = int(state[0])
        if done > max_iter:
            raise ValueError(f"the checkpoint in {checkpoints.folder} is at iteration {done}, "
                             f"beyond max_iter={max_iter}.")
        losses = carry[5].at[: done + 1].set(jnp.asarray(meta["history"], carry[5].dtype))
        carry = (*state, losses)
    segment = max_iter
    if callback is not None:
        segment = min(segment, callback_every)
    if checkpoints is not None:
        segment = min(segment, checkpoints.every)
    tol_arr = np.asarray(tol, carry[3].dtype)  # NumPy scalars: no eager JAX operation to compile
    while True:
        it = int(carry[0])
        limit = min(it + segment, max_iter)
        carry = _aot.call(segment_fn, (carry, np.asarray(limit, np.int32), tol_arr, data), statics)
        it, grad_inf = int(carry[0]), _host_inf_norm(carry[4])
        if checkpoints is not None:
            history = [float(v) for v in np.asarray(carry[5])[: it + 1]]
            checkpoints.save(it, carry[:5], {"mode": "full_batch", "history": history})
        if callback is not None:
            callback({"iteration": it, "loss": float(carry[3]), "grad_norm": grad_inf, "max_iter": max_iter})
        if not grad_inf > tol or it >= max_iter or it < limit:  # `not >`: NaN stops too
            break
    n_iter = int(carry[0])
    history = {"loss": [float(v) for v in np.asarray(carry[5])[: n_iter + 1]]}
    if not (math.isfinite(grad_inf) and math.isfinite(history["loss"][-1])):
        reason = "diverged"
    elif grad_inf <= tol:
        reason = "gtol"
    else:
        reason = "stalled" if bool(getattr(carry[2], "stalled", False)) else "max_iter"
    return carry[1], history, n_iter, 0, reason, grad_inf


def _fit_minibatch(start, data, validation, batch_size, max_epochs, patience, seed, statics,
                   callback, checkpoints, resume, validation_plan):
    optimizer, spec = statics["optimizer"], statics["spec"]
    params, state = start, optimizer.init(start)
    history: dict[str, list[float]] = {"loss": []}
    if validation is not None:
        history["val_loss"], history["val_accuracy"] = [], []
    best = {"loss": math.inf, "params": params, "wait": 0}
    epoch, n_iter = 0, 0
    steps = math.ceil(data[0].shape[0] / batch_size)
    if resume:
        like = (params, state, best["params"])
        (params, state, best_params), meta = checkpoints.resume(like)
        epoch, history = meta["epoch"], meta["history"]
        best = {"loss": meta["best_loss"], "params": best_params, "wait": meta["wait"]}
        n_iter = epoch * steps
    stop_reason = "max_epochs"
    root = jax.random.key(seed)
    while epoch < max_epochs:
        key = jax.random.fold_in(root, epoch)
        params, state, losses = _epoch(params, state, key, data, batch_size=batch_size, **statics)
        epoch += 1
        n_iter += steps
        info = {"epoch": epoch, "max_epochs": max_epochs, "loss": float(jnp.mean(losses))}
        history["loss"].append(info["loss"])
        if not math.isfinite(info["loss"]):
            stop_reason = "diverged"
            break
        monitored = info["loss"]
        if validation is not None:
            val_loss, val_acc = (float(v) for v in _metrics(params, validation, spec=spec,
                                                            plan=validation_plan))
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_acc)
            info.update(val_loss=val_loss, val_accuracy=val_acc)
            monitored = val_loss
        if monitored < best["loss"]:
            best = {"loss": monitored, "params": params, "wait": 0}
        else:
            best["wait"] += 1
        if callback is not None:
            callback(info)
        if checkpoints is not None and (epoch % checkpoints.every == 0 or epoch == max_epochs):
            meta = {"mode": "minibatch", "epoch": epoch, "history": history,
                    "best_loss": best["loss"], "wait": best["wait"]}
            checkpoints.save(epoch, (params, state, best["params"]), meta)
        if patience is not None and best["wait"] >= patience:
            params, stop_reason = best["params"], "early_stopping"
            break
    return params, history, n_iter, epoch, stop_reason, None


# --- Many models at once ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ManyResult:
    """What :func:`fit_many` returns: everything with a leading axis of M models."""

    params: Params | jax.Array  # W (M, D, K), b (M, K) or None
    n_iter: np.ndarray  # (M,) iterations each model took
    grad_norm: np.ndarray  # (M,) largest gradient entry at each model's result
    converged: np.ndarray  # (M,) grad_norm <= tol
    value: np.ndarray  # (M,) each model's risk (its own weights and l2)


@partial(jax.jit, static_argnames=("solver", "spec", "plan", "max_iter", "max_cg"))
def _fit_many_jit(params, X, labels, weights, l2s, smoothing, means, inv_scales, tol, *, solver,
                  spec, plan, max_iter, max_cg):
    def one(p, w, l2, mean, inv_scale):
        affine = None if mean is None else Affine(mean, inv_scale)
        data = (X, labels, w, l2, smoothing, affine)
        if solver == "newton-cg":
            carry = _newton_start(p, data, spec=spec, plan=plan, max_iter=max_iter)
            carry = _newton_segment(carry, max_iter, tol, data, spec=spec, plan=plan, max_cg=max_cg)
        else:
            carry = _lbfgs_start(p, data, spec=spec, plan=plan, max_iter=max_iter)
            carry = _lbfgs_segment(carry, max_iter, tol, data, spec=spec, plan=plan)
        it, fitted, _, value, grad, _ = carry
        return fitted, it, _inf_norm(grad), value

    axes = (0, 0, 0, None if means is None else 0, None if inv_scales is None else 0)
    return jax.vmap(one, in_axes=axes)(params, weights, l2s, means, inv_scales)


def fit_many(
    params: Params | Weights,
    X: Features,
    labels: Labels,
    *,
    sample_weights: jax.Array,
    l2: jax.Array,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    solver: str = "lbfgs",
    tol: float = 1e-6,
    max_iter: int = 1000,
    feature_means: jax.Array | None = None,
    feature_scales: jax.Array | None = None,
) -> ManyResult:
    r"""Fit M independent models on the same X at once, in one compiled program.

    Model m minimises :func:`jsoftmax.risk` with ``sample_weight=sample_weights[m]`` and
    ``l2=l2[m]`` — a grid of L2 strengths × row masks, e.g. the folds of a cross-validation as
    0/1 weights (no copy of X per fold). The models run as one ``vmap`` of the full-batch
    solver: their scores come from one product of X with the stacked weights, each model stops
    changing once its own gradient reaches ``tol``, and the loop ends when all have.

    Args:
      params: starting points with a leading model axis: ``Params`` with W (M, D, K) and b
        (M, K) or None, or a bare W (M, D, K) (warm starts along a path of C values).
      X, labels, label_smoothing, ignore_index: shared by all models, as in :func:`risk`.
      sample_weights: (M, N) non-negative row weights per model (0 leaves a row out; a model
        whose rows all weigh 0 has the penalty alone for objective).
      l2: (M,) L2 strength per model.
      solver: "lbfgs" or "newton-cg"; tol, max_iter: per model, as in :func:`fit`.
      feature_means, feature_scales: (M, D) each, optional: per-model standardisation folded
        into the weights (see :func:`fit`), e.g. statistics of each fold's training rows.

    Returns:
      A :class:`ManyResult`.
    """
    W = params.W if isinstance(params, Params) else params
    b = params.b if isinstance(params, Params) else None
    W = _validate.as_array(W, "params.W")
    if W.ndim != 3:
        raise ValueError(f"`params.W` must be (M, D, K), one (D, K) per model; got shape {W.shape}.")
    m = W.shape[0]
    sample_weights = _validate.as_array(sample_weights, "sample_weights")
    l2 = _validate.as_array(l2, "l2")
    if sample_weights.ndim != 2 or sample_weights.shape[0] != m:
        raise ValueError(f"`sample_weights` must be (M, N) with M = {m} models; got shape {sample_weights.shape}.")
    if l2.shape != (m,):
        raise ValueError(f"`l2` must have shape (M,) = ({m},); got {l2.shape}.")
    weights_np, l2_np = np.asarray(sample_weights, np.float64), np.asarray(l2, np.float64)
    if not np.all(np.isfinite(l2_np)) or np.any(l2_np < 0):
        raise ValueError(f"`l2` must be finite and non-negative; got {l2_np.tolist()[:10]}.")
    if not np.all(np.isfinite(weights_np)) or np.any(weights_np < 0):
        raise ValueError("`sample_weights` must be finite and non-negative.")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(map(repr, SOLVERS))}.")
    max_iter = _positive_int(max_iter, "max_iter")
    if not (isinstance(tol, numbers.Real) and tol >= 0):
        raise ValueError(f"`tol` must be a non-negative number; got {tol!r}.")
    # The first model validates the shared inputs; sliced on the host (no eager JAX program).
    first = Params(np.asarray(W)[0],
                   None if b is None else np.asarray(b)[0])
    problem, spec, plan = _api.prepare(first, X, labels, sample_weight=np.asarray(sample_weights)[0], l2=0.0,
                                       label_smoothing=label_smoothing, ignore_index=ignore_index,
                                       in_place=True, require_counted=False)
    if b is not None and b.shape != (m, W.shape[2]):
        raise ValueError(f"`params.b` must be (M, K) = ({m}, {W.shape[2]}); got {b.shape}.")
    means = scales = None
    if feature_means is not None or feature_scales is not None:
        d = problem.X.shape[1]
        means = np.zeros((m, d)) if feature_means is None else np.asarray(feature_means, np.float64)
        scales = np.ones((m, d)) if feature_scales is None else np.asarray(feature_scales, np.float64)
        if means.shape != (m, d) or scales.shape != (m, d) or not np.all(np.isfinite(means)) \
                or not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            raise ValueError(f"`feature_means`/`feature_scales` must be ({m}, {d}) finite, scales positive.")
        acc = accumulation_dtype(problem.X.dtype)
        means, scales = np.asarray(means, acc), np.asarray(1.0 / scales, acc)
    if not isinstance(problem.X, _sparse.SparseRows):  # (a sparse X is laid out by its plan already)
        # Under vmap the M models' scores of a chunk are live together, as one (rows, M·K) block:
        # plan the chunk for M·K classes. Planned for K, 5 models of 50000×128×20 ran 1.7× the
        # stacked products' floor (the (rows, M, K) ↔ (M, rows, K) relayouts left the cache); for
        # M·K, at it (`python -m benchmarks.search_chunks`).
        stacked = _engine.make_plan(problem.X.shape[0], problem.X.shape[1], W.shape[2] * m,
                                    itemsize=np.dtype(problem.X.dtype).itemsize)
        plan = dataclasses.replace(plan, chunk_rows=stacked.chunk_rows, feature_blocks=stacked.feature_blocks)
    acc = accumulation_dtype(problem.W.dtype)
    # NumPy inputs (no eager JAX conversions to compile); the program itself comes from _aot.
    start = jax.tree_util.tree_map(lambda a: np.asarray(a, acc), Params(W, b))
    weights = np.asarray(sample_weights, problem.X.dtype)
    fitted, n_iter, grad_norm, value = _aot.call(_fit_many_jit, (
        start, problem.X, problem.labels, weights, np.asarray(l2, acc), label_smoothing, means, scales,
        np.asarray(tol, acc)), dict(solver=solver, spec=spec, plan=plan, max_iter=max_iter,
                                    max_cg=_max_cg(W.shape[1] * W.shape[2] + (0 if b is None else W.shape[2]))))
    fitted = _in_dtype(fitted, W.dtype)
    grad_norm = np.asarray(grad_norm, np.float64)
    return ManyResult(fitted if isinstance(params, Params) else fitted.W, np.asarray(n_iter),
                      grad_norm, grad_norm <= tol, np.asarray(value, np.float64))
