"""``fit``: check the options once, prepare once, look up the solver, drive it, report."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _api, _validate
from .._types import Features, Labels, Params, RowValues, Weights, accumulation_dtype
from . import drive, registry
from .checkpoints import RunCheckpoints
from .objective import Affine, Data, Solver, half_precision_start, in_dtype


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


class FitOptions(NamedTuple):
    """``fit``'s options, checked once."""

    solver: Solver | None  # a full-batch solver (a registry entry, or optax's adapter)
    optimizer: optax.GradientTransformation | None  # for minibatches
    batch_size: int | None
    max_iter: int
    max_epochs: int
    tol: float
    patience: int | None
    callback_every: int
    checkpoint_every: int


def _positive_int(value: Any, name: str, allow_none: bool = False, low: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"`{name}` must be {kind}{' or None' if allow_none else ''}; got {value!r}.")
    return int(value)


def check_tol(tol: Any) -> float:
    if not (isinstance(tol, numbers.Real) and tol >= 0):
        raise ValueError(f"`tol` must be a non-negative number; got {tol!r}.")
    return float(tol)


def check_options(optimizer, solver, batch_size, max_iter, max_epochs, tol, patience, callback_every,
                  checkpoint_every, resume, checkpoint_dir, l1=0.0) -> FitOptions:
    """Every option of :func:`fit` that does not need the data, with its error."""
    batch_size = _positive_int(batch_size, "batch_size", allow_none=True)
    if optimizer is not None and solver is not None:
        raise ValueError("give either `optimizer` (an optax transformation) or `solver`, not both.")
    if optimizer is not None and not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"`optimizer` must be an optax.GradientTransformation; got {type(optimizer).__name__}.")
    _validate.check_scalar(l1, "l1", low=0.0, high=None)
    l1 = float(l1)
    if l1 > 0:
        capable = registry.with_l1()
        if optimizer is not None:
            raise ValueError(f"an L1 penalty (l1={l1:g}) needs a solver that handles it ({', '.join(map(repr, capable))}); "
                             "optax optimizers take gradient steps, which never set a weight to exactly 0.")
        solver = capable[0] if solver is None else solver
        if registry.get(solver).name not in capable:
            raise ValueError(f"solver={solver!r} does not handle an L1 penalty (l1={l1:g}); use one of "
                             f"{', '.join(map(repr, capable))}.")
    if solver is None and optimizer is None:
        solver = registry.DEFAULT
    if solver is not None and batch_size is not None:
        raise ValueError(f"solver={solver!r} is full-batch: set batch_size=None, or pass an optax "
                         "optimizer (e.g. optax.adam) for minibatches.")
    full_batch = registry.get(solver) if solver is not None else (
        registry.for_optimizer(optimizer) if batch_size is None else None)
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`.")
    return FitOptions(full_batch, optimizer, batch_size, _positive_int(max_iter, "max_iter", low=0),
                      _positive_int(max_epochs, "max_epochs", low=0), check_tol(tol),
                      _positive_int(patience, "patience", allow_none=True),
                      _positive_int(callback_every, "callback_every"),
                      _positive_int(checkpoint_every, "checkpoint_every"))


def fit(
    params: Params | Weights,
    X: Features,
    labels: Labels,
    optimizer: optax.GradientTransformation | None = None,
    *,
    solver: str | None = None,
    sample_weight: RowValues | None = None,
    l2: float = 0.0,
    l1: float = 0.0,
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
    feature_memory: str = "auto",
) -> FitResult:
    r"""Minimise :func:`jsoftmax.risk` with an Optax optimizer and the analytic gradient.

    Args:
      params: initial :class:`Params` or bare ``W``; the result has the same structure.
      X, labels, sample_weight, l2, label_smoothing, ignore_index: as in :func:`jsoftmax.risk`.
      l1: an L1 penalty λ₁‖W‖₁ added to the risk (the intercept is never penalised): with
        ``l2`` the elastic net. Needs a solver that handles it (``"owlqn"``, chosen when no
        solver is given); the fitted W has exact zeros, and ``grad_norm`` is then the KKT
        violation, the largest entry of the pseudo-gradient (``docs/derivation.md`` §14).
        A large NumPy X is read by a CPU device where it lies, not copied (full-batch fits;
        ``jsoftmax._inplace``): it must not change while the fit runs.
      optimizer: any ``optax.GradientTransformation`` (schedules included). ``optax.lbfgs()``
        gets the objective as ``value_fn`` for its line search.
      solver: instead of ``optimizer``, a built-in full-batch solver: ``"lbfgs"`` (a lean
        L-BFGS with a backtracking line search, one evaluation per iteration; see
        ``jsoftmax.train.lbfgs``) or ``"newton-cg"`` (trust-region Newton-CG on the analytic
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
      feature_memory: where a dense X stays during a full-batch fit on one device:
        ``"device"`` (copied to the device whole), ``"host"`` (kept in host memory — JAX's
        ``pinned_host`` — and moved to the device a block of rows at a time inside the compiled
        loop, each block's copy overlapping the previous block's products: X may be larger
        than the device; the same result) or ``"auto"``: ``"host"`` when X's bytes and the
        fit's working set exceed the device's free memory or X already lies in host memory,
        ``"device"`` otherwise (always on a CPU, whose device memory is the host's).

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
    options = check_options(optimizer, solver, batch_size, max_iter, max_epochs, tol, patience, callback_every,
                            checkpoint_every, resume, checkpoint_dir, l1)
    params, wide = half_precision_start(params, X)
    # A full-batch fit blocks until it ends, so a large NumPy X is read in place (_inplace).
    problem, spec, plan = _api.prepare(params, X, labels, sample_weight=sample_weight, l2=l2,
                                       label_smoothing=label_smoothing, ignore_index=ignore_index,
                                       mesh=mesh, data_axis=data_axis, class_axis=class_axis,
                                       in_place=options.batch_size is None, feature_memory=feature_memory)
    _check_layout(problem.X, options, mesh, data_axis)
    agree_across_processes(mesh, {
        "X": (tuple(problem.X.shape), str(problem.X.dtype)), "params": (tuple(problem.W.shape), problem.b is not None),
        "l2": float(l2), "l1": float(l1), "label_smoothing": float(label_smoothing), "ignore_index": int(ignore_index),
        "solver": None if options.solver is None else options.solver.name, "optimizer": optimizer is not None,
        "batch_size": options.batch_size, "max_iter": options.max_iter, "max_epochs": options.max_epochs,
        "tol": float(options.tol), "seed": seed, "data_axis": data_axis, "class_axis": class_axis,
        "feature_scaling": (feature_mean is not None, feature_scale is not None)})
    data = Data(problem.X, problem.labels, problem.sample_weight, l2, label_smoothing,
                feature_affine(feature_mean, feature_scale, problem.X), float(l1))
    # 16-bit params train as float32 masters (see objective) and come back in their dtype;
    # wider params given with a 16-bit X start as given.
    start = in_dtype(Params(problem.W, problem.b) if wide is None else wide, accumulation_dtype(problem.W.dtype))
    out_dtype = problem.W.dtype if wide is None else wide.W.dtype
    validation = _validation(validation_data, problem, data, ignore_index)
    checkpoints = None if checkpoint_dir is None else RunCheckpoints.of_run(
        checkpoint_dir, options.checkpoint_every, data, None if validation is None else validation.data, start,
        ignore_index=ignore_index, batch_size=options.batch_size, seed=seed, patience=options.patience,
        solver=None if options.solver is None else options.solver.name, optimizer=optimizer)
    if options.batch_size is None:
        run = drive.full_batch(start, data, options.solver, {"spec": spec, "plan": plan}, tol=options.tol,
                               max_iter=options.max_iter, callback=callback, callback_every=options.callback_every,
                               checkpoints=checkpoints, resume=resume)
    else:
        rows = min(options.batch_size, problem.X.shape[0])
        batch_plan = _api.plan_rows(plan, rows, problem.X.shape[1], problem.W.shape[1],
                                    np.dtype(problem.X.dtype).itemsize)
        run = drive.minibatch(start, data, options.optimizer, {"spec": spec, "plan": batch_plan}, batch_size=rows,
                              max_epochs=options.max_epochs, patience=options.patience, seed=seed,
                              validation=validation, callback=callback, checkpoints=checkpoints, resume=resume)
    return _result(run, data, spec, plan, out_dtype, options.tol, bare=not isinstance(params, Params))


def agree_across_processes(mesh, fields: dict[str, Any]) -> None:
    """On a mesh spanning several processes, every process must fit the same problem: a process
    with other shapes or options would wait forever in a collective the others never enter.
    Each field's digest is gathered from every process (one small all-gather) and every process
    raises the same ``ValueError``, naming the fields that differ, before anything runs."""
    if mesh is None or jax.process_count() == 1:
        return
    import hashlib

    from jax.experimental import multihost_utils

    names = sorted(fields)
    digests = np.array([int.from_bytes(hashlib.sha256(repr(fields[name]).encode()).digest()[:4], "little")
                        for name in names], np.uint32)
    gathered = np.asarray(multihost_utils.process_allgather(digests))  # (processes, fields)
    differ = [name for j, name in enumerate(names) if np.any(gathered[:, j] != gathered[0, j])]
    if differ:
        raise ValueError(f"the {jax.process_count()} processes disagree on {', '.join(differ)} "
                         f"(this is process {jax.process_index()}): every process must call fit with the "
                         "same shapes and options.")


def _check_layout(X, options: FitOptions, mesh, data_axis) -> None:
    """What a layout of X does not support, refused before anything runs."""
    if _api.layout_kind(X) == "sparse":
        if options.batch_size is not None:
            raise ValueError("`batch_size` (minibatches) is not supported for sparse X; use a "
                             "full-batch solver ('lbfgs', 'newton-cg') or an optax optimizer without it.")
        if mesh is not None and not options.solver.sparse_mesh:
            raise ValueError(f"solver={options.solver.name!r} is not supported for a sparse X sharded over a "
                             "`mesh`; use solver='lbfgs'.")
    if mesh is not None and options.batch_size is not None and data_axis is not None \
            and options.batch_size % mesh.shape[data_axis]:
        raise ValueError(f"`batch_size`={options.batch_size} must be a multiple of the {data_axis!r} axis size "
                         f"{mesh.shape[data_axis]}.")


def _validation(validation_data, problem, data: Data, ignore_index: int) -> drive.Validation | None:
    """Validation data validated, planned and (a sparse X) laid out as the training data are."""
    if validation_data is None:
        return None
    if not (isinstance(validation_data, tuple) and len(validation_data) == 2):
        raise TypeError("`validation_data` must be a tuple (X_val, labels_val).")
    checked, _, plan = _api.prepare(Params(problem.W, problem.b), validation_data[0], validation_data[1],
                                    label_smoothing=data.smoothing, ignore_index=ignore_index)
    if checked.soft != problem.soft:
        raise TypeError("`validation_data` labels must be of the same kind (ids or rows) as `labels`.")
    return drive.Validation(Data(checked.X, checked.labels, None, 0.0, data.smoothing, data.affine), plan)


def _result(run: drive.Run, data: Data, spec, plan, dtype, tol: float, bare: bool) -> FitResult:
    """The run as a :class:`FitResult`: the gradient's norm on the full data (measured here after
    minibatches), the reason it stopped, the params in their own dtype and structure."""
    grad_norm = run.grad_norm
    if grad_norm is None:
        grad_norm = float(drive.grad_inf_norm(run.params, data, spec=spec, plan=plan))
    stop_reason = run.stop_reason
    if not math.isfinite(grad_norm):
        stop_reason = "diverged"
    elif stop_reason not in ("gtol", "early_stopping", "diverged") and grad_norm <= tol:
        stop_reason = "gtol"
    fitted = in_dtype(run.params, dtype)
    return FitResult(fitted.W if bare else fitted, run.history, run.n_iter, run.n_epochs,
                     stop_reason in ("gtol", "early_stopping"), grad_norm, stop_reason)


def feature_affine(mean, scale, X) -> Affine | None:
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


