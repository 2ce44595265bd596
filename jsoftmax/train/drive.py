"""Driving a solver: full batch in compiled segments, or minibatch epochs; callbacks and checkpoints.

* **Full batch** (:func:`full_batch`): the solver's compiled start, then its compiled segment —
  a ``lax.while_loop`` until the gradient's largest entry is at most ``tol``, ``max_iter``
  iterations, or the solver stalls. A callback or checkpoints split the loop into segments of the
  same compiled program (nothing recompiles); the programs come from ``_aot``'s store.
* **Minibatch** (:func:`minibatch`): one epoch is one ``lax.scan`` over shuffled batches (a fresh
  permutation per epoch from ``seed``); Python only loops over epochs, for validation, early
  stopping, callbacks and checkpoints.

Both return a :class:`Run`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from .. import _aot, _api
from .._types import Params
from .checkpoints import RunCheckpoints
from .objective import Carry, Data, Solver, inf_norm, objective, on_raw_features, in_dtype
from .optax_solver import update


class Run(NamedTuple):
    """What a driver hands back to ``fit``."""

    params: Params
    history: dict[str, list[float]]
    n_iter: int
    n_epochs: int
    stop_reason: str
    grad_norm: float | None  # None: ``fit`` measures it on the full data


def host_inf_norm(tree) -> float:
    """max |leaf| over a small pytree (a gradient), on the host: no eager JAX program."""
    # np.max, not Python's max: a NaN must win (a diverged fit is reported as such).
    return float(np.max([np.max(np.abs(np.asarray(leaf)), initial=0.0) for leaf in jax.tree_util.tree_leaves(tree)]))


def full_batch(start: Params, data: Data, solver: Solver, statics: dict, *, tol: float, max_iter: int,
               callback: Callable | None, callback_every: int, checkpoints: RunCheckpoints | None,
               resume: bool) -> Run:
    """Drive ``solver`` over ``data`` from ``start`` (``statics``: ``spec`` and ``plan``)."""
    start_statics, segment_statics = solver.statics(start)
    carry: Carry = _aot.call(solver.start, (start, data), {**statics, **start_statics, "max_iter": max_iter})
    if resume:
        # The state without the loss buffer (its length depends on max_iter); history in meta.
        state, meta = checkpoints.resume(carry._replace(losses=None))
        done = int(state.iteration)
        if done > max_iter:
            raise ValueError(f"the checkpoint in {checkpoints.folder} is at iteration {done}, "
                             f"beyond max_iter={max_iter}.")
        carry = state._replace(losses=carry.losses.at[: done + 1].set(jnp.asarray(meta["history"], carry.losses.dtype)))
    segment = min([max_iter] + ([callback_every] if callback is not None else [])
                  + ([checkpoints.every] if checkpoints is not None else []))
    tol_arr = np.asarray(tol, carry.value.dtype)  # NumPy scalars: no eager JAX operation to compile
    while True:
        limit = min(int(carry.iteration) + segment, max_iter)
        carry = _aot.call(solver.segment, (carry, np.asarray(limit, np.int32), tol_arr, data),
                          {**statics, **segment_statics})
        it, grad_inf = int(carry.iteration), host_inf_norm(carry.grad)
        if checkpoints is not None:
            history = [float(v) for v in np.asarray(carry.losses)[: it + 1]]
            checkpoints.save(it, carry._replace(losses=None), {"mode": "full_batch", "history": history})
        if callback is not None:
            callback({"iteration": it, "loss": float(carry.value), "grad_norm": grad_inf, "max_iter": max_iter})
        if not grad_inf > tol or it >= max_iter or it < limit:  # `not >`: NaN stops too
            break
    history = {"loss": [float(v) for v in np.asarray(carry.losses)[: it + 1]]}
    if not (math.isfinite(grad_inf) and math.isfinite(history["loss"][-1])):
        reason = "diverged"
    elif grad_inf <= tol:
        reason = "gtol"
    else:
        reason = "stalled" if bool(getattr(carry.state, "stalled", False)) else "max_iter"
    return Run(carry.params, history, it, 0, reason, grad_inf)


@partial(jax.jit, static_argnames=("optimizer", "spec", "plan", "batch_size"))
def epoch(params, state, key, data: Data, *, optimizer, spec, plan, batch_size):
    """One epoch: a fresh permutation, then a lax.scan of optimizer steps over its batches."""
    n = data.X.shape[0]
    steps = math.ceil(n / batch_size)
    # Pad the permutation to whole batches with weight-0 rows: every sample is used each epoch.
    order = jnp.concatenate([jax.random.permutation(key, n), jnp.zeros(steps * batch_size - n, int)])
    real = jnp.arange(steps * batch_size) < n
    weights = real.astype(data.X.dtype) if data.sample_weight is None else jnp.where(real, data.sample_weight[order], 0)
    batches = (order.reshape(steps, batch_size), weights.reshape(steps, batch_size))

    def step(carry, batch):
        params, state = carry
        rows, w = batch
        objective_fn = objective(data._replace(X=data.X[rows], labels=data.labels[rows], sample_weight=w), spec, plan)
        value, grad = jax.value_and_grad(objective_fn)(params)
        params, state = update(optimizer, objective_fn, grad, state, params, value)
        return (params, state), value

    (params, state), losses = lax.scan(step, (params, state), batches)
    return params, state, losses


@partial(jax.jit, static_argnames=("spec", "plan"))
def metrics(params, data: Data, *, spec, plan):
    """(risk without penalty, accuracy over counted rows) on a data set, from one fused pass
    (the predictions come with the loss; no second product over X, dense or sparse)."""
    params = on_raw_features(in_dtype(params, data.X.dtype), data.affine)
    loss, predicted = _api.loss(params.W, params.b, data.X, data.labels, data.sample_weight, data.smoothing, 0.0,
                                spec, plan, return_predictions=True)
    if spec.soft:
        correct, counted = predicted == jnp.argmax(data.labels, axis=1), jnp.ones_like(predicted, bool)
    else:
        correct, counted = predicted == data.labels, data.labels != spec.ignore_index
    return loss, jnp.sum(correct & counted) / jnp.sum(counted)


@partial(jax.jit, static_argnames=("spec", "plan"))
def grad_inf_norm(params, data: Data, *, spec, plan):
    return inf_norm(jax.grad(objective(data, spec, plan))(params))


class Validation(NamedTuple):
    data: Data
    plan: Any


def minibatch(start: Params, data: Data, optimizer: optax.GradientTransformation, statics: dict, *,
              batch_size: int, max_epochs: int, patience: int | None, seed: int,
              validation: Validation | None, callback: Callable | None,
              checkpoints: RunCheckpoints | None, resume: bool) -> Run:
    """Epochs of ``optimizer`` steps over shuffled batches (``statics``: ``spec``, ``plan``)."""
    spec = statics["spec"]
    params, state = start, optimizer.init(start)
    history: dict[str, list[float]] = {"loss": []}
    if validation is not None:
        history["val_loss"], history["val_accuracy"] = [], []
    best = {"loss": math.inf, "params": params, "wait": 0}
    done, n_iter = 0, 0
    steps = math.ceil(data.X.shape[0] / batch_size)
    if resume:
        (params, state, best_params), meta = checkpoints.resume((params, state, best["params"]))
        done, history = meta["epoch"], meta["history"]
        best = {"loss": meta["best_loss"], "params": best_params, "wait": meta["wait"]}
        n_iter = done * steps
    stop_reason = "max_epochs"
    root = jax.random.key(seed)
    while done < max_epochs:
        params, state, losses = epoch(params, state, jax.random.fold_in(root, done), data, optimizer=optimizer,
                                      batch_size=batch_size, **statics)
        done += 1
        n_iter += steps
        info = {"epoch": done, "max_epochs": max_epochs, "loss": float(jnp.mean(losses))}
        history["loss"].append(info["loss"])
        if not math.isfinite(info["loss"]):
            stop_reason = "diverged"
            break
        monitored = info["loss"]
        if validation is not None:
            val_loss, val_acc = (float(v) for v in metrics(params, validation.data, spec=spec, plan=validation.plan))
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
        if checkpoints is not None and (done % checkpoints.every == 0 or done == max_epochs):
            checkpoints.save(done, (params, state, best["params"]), {
                "mode": "minibatch", "epoch": done, "history": history, "best_loss": best["loss"],
                "wait": best["wait"]})
        if patience is not None and best["wait"] >= patience:
            params, stop_reason = best["params"], "early_stopping"
            break
    return Run(params, history, n_iter, done, stop_reason, None)
