"""The functions the hot-path benchmarks compare, each (x, w, y) -> value or (value, grads).

The op is used as a language-model head: the loss and its gradients with respect to both the
inputs x and the weights w. The floor is the three matrix products that any method must do:
z = x@w forward, and xᵀ@dz, dz@wᵀ backward (here with dz = z, the same shapes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jsoftmax

VARIANTS = ("floor", "chunked", "reference", "naive_jax_grad", "optax_jax_grad")


def _mm(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _floor_forward(x, w, y):
    return _mm(x, w)


def _floor_backward(x, w, y):
    z = _mm(x, w).astype(x.dtype)
    return z, _mm(x.T, z), _mm(z, w.T)


def _naive(x, w, y):
    logits = _mm(x, w)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _optax(x, w, y):
    return optax.losses.softmax_cross_entropy_with_integer_labels(_mm(x, w), y).mean()


def _op(implementation):
    def loss(x, w, y):
        return jsoftmax.linear_cross_entropy(x, w, y, implementation=implementation, check_values=False)

    return loss


LOSSES = {"chunked": _op("chunked"), "reference": _op("reference"), "naive_jax_grad": _naive,
          "optax_jax_grad": _optax}


def build(variant: str, mode: str):
    """A jitted function of (x, w, y) for ``mode`` "forward" or "forward_backward"."""
    if variant == "floor":
        return jax.jit(_floor_forward if mode == "forward" else _floor_backward)
    loss = LOSSES[variant]
    if mode == "forward":
        return jax.jit(loss)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def inputs(n: int, d: int, k: int, dtype: str, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 3)
    dt = jnp.dtype(dtype)
    x = jax.random.normal(keys[0], (n, d), dt)
    w = jax.random.normal(keys[1], (d, k), dt) * jnp.asarray(d ** -0.5, dt)  # no f32 copy of W
    y = jax.random.randint(keys[2], (n,), 0, k)
    return x, w, y


def host_inputs(n: int, d: int, k: int, dtype: str, seed: int = 0):
    """The same distribution generated on the host and copied over, so that a device's peak
    memory counts the inputs and the program, not the temporaries of generating them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dt = jnp.dtype(dtype)
    x = rng.standard_normal((n, d), dtype=np.float32).astype(dt)
    w = (rng.standard_normal((d, k), dtype=np.float32) * np.float32(d ** -0.5)).astype(dt)
    y = rng.integers(0, k, n, dtype=np.int32)
    return tuple(jax.device_put(a) for a in (x, w, y))
