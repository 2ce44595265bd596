"""One device count of the scaling suite: ``python -m benchmarks.suites.scaling_worker DEVICES QUICK``.

Sets XLA_FLAGS for DEVICES forced host devices (on CPU) before importing jax, then prints JSON
with, per mode, the per-device memory of the compiled value-and-gradient (arguments, outputs,
temps from ``memory_analysis()``) and its median time.
"""

from __future__ import annotations

import json
import os
import sys

devices = int(sys.argv[1])
if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jsoftmax  # noqa: E402

from .. import common  # noqa: E402


def main() -> None:
    quick = sys.argv[2] == "1"
    n, d, k = (1024, 128, 4096) if quick else (4096, 256, 32000)
    keys = jax.random.split(jax.random.key(0), 3)
    X = jax.random.normal(keys[0], (n, d), jnp.float32)
    W = jax.random.normal(keys[1], (d, k), jnp.float32) * 0.05
    y = jax.random.randint(keys[2], (n,), 0, k)
    mesh = jax.make_mesh((devices,), ("x",), devices=jax.devices()[:devices])
    out = {"devices": devices, "n": n, "d": d, "k": k, "platform": jax.devices()[0].platform}
    for mode, axes in {"data": dict(data_axis="x"), "class": dict(class_axis="x")}.items():
        fn = jax.jit(lambda W, X: jsoftmax.value_and_grad(W, X, y, check_values=False, mesh=mesh, **axes))
        compiled = fn.lower(W, X).compile()
        stats = compiled.memory_analysis()
        timing = common.timed(lambda: compiled(W, X), repeats=3)
        out[mode] = {"argument_bytes": stats.argument_size_in_bytes, "output_bytes": stats.output_size_in_bytes,
                     "temp_bytes": stats.temp_size_in_bytes, **timing}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
