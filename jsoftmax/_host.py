r"""X kept in host memory, its row blocks moved to the device inside the compiled loop (:class:`HostRows`).

When X does not fit in device memory beside what a fit works with, it stays in the host's
memory (JAX's ``pinned_host`` memory kind, which the GPU's copy engines read directly) and the
engine's row loop moves one block of rows at a time to the device: a ``dynamic_slice`` of the
host array followed by ``jax.device_put(block, jax.memory.Space.Device)``, which XLA turns into
an asynchronous host-to-device copy (its host offloading), inside the one compiled program —
no Python loop of transfers. The loop carries the *next* block (see
``_layouts.over_row_blocks``): block i + 1's copy is issued before block i's products, and
nothing orders one after the other, so the copy engine and the matrix units work at once.
The device then holds two blocks of X, not X.

The result is the in-device fit's: the same chunks in the same order, the same products. A
pass costs at least :math:`N D b / B_{PCIe}` (X's bytes over the bus), against the two
products' :math:`4NDK / F` for the same pass on the device's matrix units of rate F.

On a CPU the "device" is the host: ``pinned_host`` is another name for the same memory, the
transfers compile to nothing and the path reads X where it lies — what it exists to test.

``feature_memory`` (of :func:`jsoftmax.fit` and the estimators) chooses: ``"device"`` (X is
copied to the device whole), ``"host"`` (this path), or ``"auto"``: this path when X's bytes
and the fit's working set exceed the device's free memory (``Device.memory_stats``), or when
X already lies in host memory; the device otherwise, and always on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import SingleDeviceSharding

from . import _layouts
from ._types import accumulation_dtype

FEATURE_MEMORIES = ("auto", "device", "host")
HOST_MEMORY = "pinned_host"
# What "auto" sets aside beside X: copies of the (D, K) parameters (an L-BFGS history of 10
# pairs, the gradient, the search direction, a line search's trial point, a Newton-CG solve's
# vectors: about 30) and the scratch of a few blocks of scores.
PARAMETER_COPIES = 32
SCORE_BLOCKS = 4


def working_bytes(d: int, k: int, chunk_rows: int, itemsize: int = 4) -> int:
    """What a fit keeps on the device besides X: parameter-sized arrays and score blocks."""
    return PARAMETER_COPIES * (d + 1) * k * max(itemsize, 4) + SCORE_BLOCKS * chunk_rows * k * 4


def lies_on_host(X) -> bool:
    """X is a JAX array in host memory already (its sharding's ``memory_kind``)."""
    return isinstance(X, jax.Array) and getattr(X.sharding, "memory_kind", None) == HOST_MEMORY


def free_device_bytes(device=None) -> int | None:
    """Bytes the device can still allocate (``bytes_limit − bytes_in_use``), or None where the
    platform does not say (a CPU)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def keeps_on_host(feature_memory: str, X, extra_bytes: int) -> bool:
    """Whether a fit keeps ``X`` in host memory (see the module doc for ``"auto"``)."""
    if feature_memory != "auto":
        return feature_memory == "host"
    if lies_on_host(X):
        return True
    if not isinstance(X, np.ndarray):  # already on the device: it fitted there
        return False
    free = free_device_bytes()
    return free is not None and X.nbytes + extra_bytes > free


def host_sharding(device=None) -> SingleDeviceSharding:
    """The host memory that ``device`` (default: the first) reads directly."""
    device = device or jax.devices()[0]
    kinds = [memory.kind for memory in device.addressable_memories()]
    if HOST_MEMORY not in kinds:
        raise ValueError(f"feature_memory='host' needs a device that reads host memory ({HOST_MEMORY!r}); "
                         f"{device.platform} offers {', '.join(kinds)}.")
    return SingleDeviceSharding(device, memory_kind=HOST_MEMORY)


def place(X, chunk_rows: int) -> HostRows:
    """X (NumPy or JAX, dense (N, D)) in host memory as a :class:`HostRows` of ``chunk_rows``-row
    blocks. The copy into host memory (none when X lies there already) is complete when this
    returns, so the caller's array is not read afterwards."""
    rows = jax.device_put(X, host_sharding()).block_until_ready()
    return HostRows(rows, chunk_rows)


@jax.tree_util.register_pytree_node_class
class HostRows:
    """Dense X (N, D) in host memory, read by the device a block of rows at a time (see the
    module doc). Leaf: ``rows``, the (N, D) array in ``pinned_host`` memory; static:
    ``chunk_rows``."""

    kind = "dense"  # see _layouts: its blocks are dense device arrays
    prefetch = True  # a loop over its blocks carries the next one (_layouts.over_row_blocks)

    def __init__(self, rows, chunk_rows: int):
        self.rows, self.chunk_rows = rows, int(chunk_rows)

    def tree_flatten(self):
        return (self.rows,), (self.chunk_rows,)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(*leaves, *aux)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rows.shape)

    @property
    def dtype(self):
        return self.rows.dtype

    @property
    def ndim(self) -> int:
        return 2

    def __array__(self, dtype=None, copy=None):
        """X as a NumPy array (fingerprints, host-side checks); not inside a program."""
        out = np.asarray(self.rows)
        return out if dtype is None else out.astype(dtype)

    def chunk(self, start, size: int) -> jax.Array:
        """Rows ``[start, start + size)`` on the device (``start`` may be traced): one copy of
        ``size × D`` values over the bus."""
        block = lax.dynamic_slice_in_dim(self.rows, start, size, axis=0)
        return jax.device_put(block, jax.memory.Space.Device)

    def nonfinite_marker(self) -> jax.Array:
        """0 when every value of X is finite, NaN otherwise (``_layouts.nonfinite_marker``),
        block by block on the device."""
        def body(total, start, block):
            return total + _layouts.nonfinite_marker(block)

        return _layouts.over_row_blocks(self, body, jnp.zeros((), accumulation_dtype(self.dtype)))
