"""Plain-jnp reference risk: the oracle that ``jax.grad`` differentiates in the checks.

Written straight from the definition (one-hot targets, ``log_softmax``), with no custom VJP and
none of the kernel's tricks, so that agreeing with it means something.
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


def reference_risk(
    W,
    b,
    X,
    labels,
    *,
    sample_weight=None,
    l2=0.0,
    label_smoothing=0.0,
    ignore_index=-100,
):
    """R = sum_n w_n l_n / sum_n w_n + (l2 / 2) ||W||^2, straight from the definition."""
    z = X @ W if b is None else X @ W + b
    n, k = z.shape
    t = reference_targets(labels, k, label_smoothing=label_smoothing).astype(z.dtype)
    losses = reference_row_loss(z, t)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        w = (labels != ignore_index).astype(z.dtype)
    else:
        w = jnp.ones((n,), z.dtype)
    if sample_weight is not None:
        w = w * sample_weight
    return jnp.sum(w * losses) / jnp.sum(w) + 0.5 * l2 * jnp.sum(W * W)
