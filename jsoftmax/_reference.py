"""Plain-jnp references: the oracles that ``jax.grad`` differentiates in the checks.

Written straight from the definition (``docs/derivation.md`` §1): the logits are materialised,
targets are built as dense (N, K) rows and the loss is ``-Σ t log_softmax(z)``; no custom VJP,
no chunking and none of the engine's formulas, so agreeing with them means something.
``log_softmax`` subtracts the row maximum before anything else, so large scores do not cancel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reference_targets(labels, n_classes, *, label_smoothing=0.0):
    """Target rows t = (1 - eps) y + eps / K, shape (N, K); y one-hot for integer labels."""
    if jnp.issubdtype(labels.dtype, jnp.integer):
        y = jax.nn.one_hot(labels, n_classes)  # ignored / out-of-range ids give a zero row
    else:
        y = labels
    return (1 - label_smoothing) * y + label_smoothing / n_classes


def reference_row_loss(z, t):
    """Per-sample loss  l = -t^T log softmax(z), for z and t of shape (..., K)."""
    return -jnp.sum(t * jax.nn.log_softmax(z, axis=-1), axis=-1)


def reference_loss(x, w, b, labels, *, sample_weight=None, label_smoothing=0.0, z_loss=0.0,
                   ignore_index=-100, reduction="mean", accumulate=None, softcap=None):
    """The loss of the linear head ``x @ w + b`` with every option, straight from the definition.

    ``reduction``: "mean" (Σ sₙmₙℓₙ / Σ sₙmₙ), "sum" (Σ sₙmₙℓₙ) or "none" (sₙmₙℓₙ per row), with
    mₙ = 0 on rows labelled ``ignore_index``. ``accumulate``: dtype of the scores (default that
    of ``x``). ``softcap``: c > 0 replaces the scores by c·tanh(z/c) before the softmax.
    """
    dtype = accumulate or x.dtype
    z = jnp.matmul(x, w, preferred_element_type=dtype, precision=jax.lax.Precision.HIGHEST)
    if b is not None:
        z = z + b.astype(dtype)
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    t = reference_targets(labels, w.shape[1], label_smoothing=label_smoothing).astype(dtype)
    losses = reference_row_loss(z, t) + z_loss * jax.nn.logsumexp(z, axis=-1) ** 2
    if jnp.issubdtype(labels.dtype, jnp.integer):
        weights = (labels != ignore_index).astype(dtype)
    else:
        weights = jnp.ones(z.shape[:1], dtype)
    if sample_weight is not None:
        weights = weights * sample_weight
    weighted = jnp.where(weights != 0, weights * losses, 0)
    if reduction == "none":
        return weighted
    total = jnp.sum(weighted)
    return total / jnp.sum(weights) if reduction == "mean" else total


def reference_risk(W, b, X, labels, *, sample_weight=None, l2=0.0, label_smoothing=0.0,
                   ignore_index=-100, softcap=None):
    """R = Σ wₙℓₙ / Σ wₙ + (l2 / 2) ‖W‖²."""
    data = reference_loss(X, W, b, labels, sample_weight=sample_weight,
                          label_smoothing=label_smoothing, ignore_index=ignore_index,
                          softcap=softcap)
    return data + 0.5 * l2 * jnp.sum(W * W)
