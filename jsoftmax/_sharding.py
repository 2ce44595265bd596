"""Data-parallel and class-parallel evaluation over a ``jax.sharding.Mesh`` with ``shard_map``.

Layout (``P`` = ``jax.sharding.PartitionSpec``; ``data`` and ``classes`` are the mesh axes given
as ``data_axis`` and ``class_axis``, either may be None):

* X ``P(data, None)``, labels ``P(data)`` (probability rows ``P(data, classes)``), row weights
  ``P(data)``;
* W ``P(None, classes)``, b ``P(classes)``: each device holds K / n_class_devices columns.

Each device runs the same row-chunked engine on its block. Along the class axis the
log-sum-exp is completed with ``pmax`` (the max) and ``psum`` (the rescaled sum), and the target
scores with ``psum``; every device keeps its own columns of dW and db. Along the data axis the
loss, dW and db are summed with ``psum`` (an all-reduce) and dX stays with its rows. So in
class-parallel mode no device ever holds the full W, its gradient, or the N×K scores.

Inputs laid out differently (for example labels sharded unlike X) are resharded by ``jit`` to
the layout above before the ``shard_map``: the result does not depend on the input layout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _engine
from ._engine import Evaluation, Options


def check_mesh(mesh, data_axis: str | None, class_axis: str | None, n: int, k: int) -> None:
    """Validate a mesh request before tracing; ``ValueError``/``TypeError`` say what is wrong."""
    if mesh is None:
        if data_axis is not None or class_axis is not None:
            raise ValueError("`data_axis`/`class_axis` need a `mesh`.")
        return
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    if data_axis is None and class_axis is None:
        raise ValueError("with a `mesh`, name at least one of `data_axis` and `class_axis`.")
    if data_axis is not None and data_axis == class_axis:
        raise ValueError(f"`data_axis` and `class_axis` must differ; both are {data_axis!r}.")
    for name, axis in (("data_axis", data_axis), ("class_axis", class_axis)):
        if axis is not None and axis not in mesh.axis_names:
            raise ValueError(f"`{name}`={axis!r} is not an axis of the mesh; its axes are "
                             f"{tuple(mesh.axis_names)}.")
    if data_axis is not None and n % mesh.shape[data_axis]:
        raise ValueError(f"the {n} rows cannot be split evenly over mesh axis {data_axis!r} of size "
                         f"{mesh.shape[data_axis]}; pad or drop rows to a multiple of it.")
    if class_axis is not None and k % mesh.shape[class_axis]:
        raise ValueError(f"the {k} classes cannot be split evenly over mesh axis {class_axis!r} of "
                         f"size {mesh.shape[class_axis]}; pad W with columns (and b with -inf) to a "
                         "multiple of it.")


def local_chunks(opts: Options, n: int, k: int, chunk_rows=None, class_chunk=None) -> tuple[int, int | None]:
    """(rows, classes) per chunk for the block one device holds: explicit sizes win, else the
    rule of :func:`jsoftmax._engine.choose_chunks`; no class blocks on a class-sharded axis."""
    if opts.mesh is not None:
        n //= opts.mesh.shape[opts.data_axis] if opts.data_axis else 1
        k //= opts.mesh.shape[opts.class_axis] if opts.class_axis else 1
    rows, classes = _engine.choose_chunks(n, k)
    if chunk_rows is not None:
        rows, classes = min(chunk_rows, n), class_chunk
    elif class_chunk is not None:
        classes = class_chunk
    return rows, None if opts.class_axis else classes


def specs(d: str | None, c: str | None, soft: bool) -> dict[str, P]:
    """PartitionSpecs of every input of the sharded evaluation (d, c: data and class axes)."""
    return {"W": P(None, c), "b": P(c), "X": P(d, None), "labels": P(d, c) if soft else P(d),
            "coef": P(d), "lse": P(d), "eps": P(), "zeta": P()}


def evaluate(W, b, X, labels, coef, l2, eps, zeta, opts: Options, *, grad_W: bool, grad_X: bool,
             rows_out: bool = False, chunk_rows: int | None = None, class_chunk: int | None = None,
             lse=None) -> Evaluation:
    """:func:`jsoftmax._engine.evaluate` over ``opts.mesh``; same arguments and result."""
    d, c = opts.data_axis, opts.class_axis
    local_opts = dataclasses.replace(opts, l2=False, mesh=None)  # the penalty is added once, below
    args = {"W": W, "X": X, "labels": labels, "coef": coef, "eps": jnp.asarray(eps), "zeta": jnp.asarray(zeta)}
    if b is not None:
        args["b"] = b
    if lse is not None:
        args["lse"] = lse
    all_specs = specs(d, c, opts.soft)
    in_specs = {name: all_specs[name] for name in args}

    def local(a):
        offset = lax.axis_index(c) * a["W"].shape[1] if c else None
        ev = _engine.evaluate(
            a["W"], a.get("b"), a["X"], a["labels"], a["coef"], 0.0, a["eps"], a["zeta"],
            local_opts, grad_W=grad_W, grad_X=grad_X,
            rows_out=rows_out, chunk_rows=chunk_rows, class_chunk=None if c else class_chunk,
            lse=a.get("lse"), class_offset=offset,
        )
        value, gW, gb = ev.value, ev.gW, ev.gb
        if d:
            value = lax.psum(value, d)
            gW = None if gW is None else lax.psum(gW, d)
            gb = None if gb is None else lax.psum(gb, d)
        gX = ev.gX
        if c and gX is not None:
            gX = lax.psum(gX, c)
        return Evaluation(value, gW, gb, gX, ev.loss, ev.lse)

    out_specs = Evaluation(
        P(), P(None, c) if grad_W else None, P(c) if (grad_W and b is not None) else None,
        P(d, None) if grad_X else None, P(d) if rows_out else None, P(d) if rows_out else None,
    )
    args = {name: _place(value, opts.mesh, in_specs[name]) for name, value in args.items()}
    # check_vma=False: the row loop's zero-initialised carry is device-invariant while its body
    # output varies along the mesh axes; every cross-device value is reduced explicitly above.
    ev = jax.shard_map(local, mesh=opts.mesh, in_specs=(in_specs,), out_specs=out_specs,
                       check_vma=False)(args)
    if opts.l2:
        acc = ev.value.dtype
        l2v = jnp.asarray(l2, acc)
        value = ev.value + 0.5 * l2v * jnp.sum(jnp.square(W.astype(acc)))
        gW = None if ev.gW is None else ev.gW + l2v * W.astype(acc)
        ev = ev._replace(value=value, gW=gW)
    return ev


def auto_mesh(mesh: Mesh | None) -> Mesh | None:
    """The same devices and axis names with Auto axis types.

    ``jax.make_mesh`` gives Explicit axes in recent jax, whose sharding-in-types rules would
    make every caller enter ``jax.set_mesh``; jsoftmax places its own inputs, so it works on the
    Auto twin of the mesh, which behaves the same under any jax version.
    """
    if mesh is None or not hasattr(jax.sharding, "AxisType"):
        return mesh
    auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    if tuple(getattr(mesh, "axis_types", auto)) == auto:
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def place_inputs(mesh: Mesh | None, data_axis, class_axis, W, b, X, labels, sample_weight):
    """Concrete inputs laid out on the Auto twin of ``mesh`` in the designed layout, eagerly.

    Traced inputs are left to :func:`evaluate`, which constrains them inside the program.
    """
    if mesh is None:
        return W, b, X, labels, sample_weight
    mesh = auto_mesh(mesh)
    layout = specs(data_axis, class_axis, labels.ndim == 2)

    def put(x, spec):
        if x is None or isinstance(x, jax.core.Tracer):
            return x
        target = NamedSharding(mesh, spec)
        current = getattr(x, "sharding", None)
        if current == target:
            return x
        return jax.device_put(x, target)

    return (put(W, layout["W"]), put(b, layout["b"]), put(X, layout["X"]),
            put(labels, layout["labels"]), put(sample_weight, layout["coef"]))


def _place(x, mesh: Mesh, spec: P):
    """Lay ``x`` out as ``spec`` whatever its current layout (resharded by jit, never misread)."""
    return lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def run_evaluate(W, b, X, labels, coef, l2, eps, zeta, opts: Options, **kwargs) -> Evaluation:
    """Dispatch: the sharded evaluation when ``opts.mesh`` is set, the engine otherwise."""
    if opts.mesh is None:
        return _engine.evaluate(W, b, X, labels, coef, l2, eps, zeta, opts, **kwargs)
    return evaluate(W, b, X, labels, coef, l2, eps, zeta, opts, **kwargs)


def shard_arrays(mesh: Mesh, *, data_axis: str | None = None, class_axis: str | None = None,
                 X=None, labels=None, params=None):
    """Place X, labels and params on ``mesh`` in the layout above (single-process helper).

    In a multi-process run, build the global arrays from each process's rows with
    ``jax.make_array_from_process_local_data(NamedSharding(mesh, P(data_axis)), local_rows)``.
    """
    out = {}
    if X is not None:
        out["X"] = jax.device_put(X, NamedSharding(mesh, P(data_axis, None)))
    if labels is not None:
        spec = P(data_axis) if jnp.ndim(labels) == 1 else P(data_axis, class_axis)
        out["labels"] = jax.device_put(labels, NamedSharding(mesh, spec))
    if params is not None:
        W, b = (params.W, params.b) if hasattr(params, "W") else (params, None)
        W = jax.device_put(W, NamedSharding(mesh, P(None, class_axis)))
        b = None if b is None else jax.device_put(b, NamedSharding(mesh, P(class_axis)))
        out["params"] = type(params)(W, b) if hasattr(params, "W") else W
    return out
