"""Meshes: checking a sharding request and laying inputs out, before and during tracing.

Layout (``P`` = ``jax.sharding.PartitionSpec``; ``data`` and ``classes`` are the mesh axes given
as ``data_axis`` and ``class_axis``, either may be None):

* X ``P(data, None)``, labels ``P(data)`` (probability rows ``P(data, classes)``), row
  coefficients and per-row outputs ``P(data)``;
* W ``P(None, classes)``, b ``P(classes)``: each device holds K / n_class_devices columns.

The evaluation over this layout (``shard_map``) is the engine's (``jsoftmax._engine``); this
module owns the layout itself, the checks of a request, and the placement of concrete inputs.
Inputs laid out differently are resharded by ``jit`` before the ``shard_map``, so the result
never depends on how the caller placed them.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _inplace
from ._compat import is_tracer


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


def partition_specs(data_axis: str | None, class_axis: str | None, soft: bool) -> dict[str, P]:
    """PartitionSpecs of every input of the sharded evaluation, by name."""
    d, c = data_axis, class_axis
    return {"W": P(None, c), "b": P(c), "X": P(d, None), "labels": P(d, c) if soft else P(d),
            "sample_weight": P(d), "coef": P(d), "lse": P(d), "eps": P(), "zeta": P()}


def place_inputs(mesh: Mesh | None, data_axis, class_axis, **arrays):
    """Concrete inputs laid out on the Auto twin of ``mesh`` in the designed layout, eagerly.

    Keyword names are those of :func:`partition_specs`; None and traced values pass through
    (the engine constrains traced ones inside the program). Returns a dict of the same keys.
    """
    if mesh is None:
        return arrays
    mesh = auto_mesh(mesh)
    labels = arrays.get("labels")
    layout = partition_specs(data_axis, class_axis, labels is not None and labels.ndim == 2)

    def put(name, x):
        if x is None or is_tracer(x):
            return x
        target = NamedSharding(mesh, layout[name])
        return x if getattr(x, "sharding", None) == target else jax.device_put(x, target)

    return {name: put(name, x) for name, x in arrays.items()}


def constrain(x, mesh: Mesh, spec: P):
    """Lay ``x`` out as ``spec`` inside a program, whatever its current layout."""
    return lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


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
        spec = P(data_axis) if np.ndim(labels) == 1 else P(data_axis, class_axis)
        out["labels"] = jax.device_put(labels, NamedSharding(mesh, spec))
    if params is not None:
        W, b = (params.W, params.b) if hasattr(params, "W") else (params, None)
        W = jax.device_put(W, NamedSharding(mesh, P(None, class_axis)))
        b = None if b is None else jax.device_put(b, NamedSharding(mesh, P(class_axis)))
        out["params"] = type(params)(W, b) if hasattr(params, "W") else W
    return out


# --- Explicit axes (sharding in types) -------------------------------------------------------


def _explicit_names(mesh) -> tuple[str, ...]:
    types = getattr(mesh, "axis_types", None)
    if types is None or not hasattr(jax.sharding, "AxisType"):
        return ()
    return tuple(name for name, kind in zip(mesh.axis_names, types) if kind == jax.sharding.AxisType.Explicit)


def explicit_mesh(*trees):
    """The (abstract) mesh with Explicit axes that shards any array of ``trees`` (read from
    their types), or the context mesh (``jax.set_mesh``) when its axes are Explicit; None
    when neither is."""
    if not hasattr(jax.sharding, "auto_axes"):  # a jax without sharding in types
        return None
    for leaf in jax.tree_util.tree_leaves(trees):
        if isinstance(leaf, jax.Array) or is_tracer(leaf):
            mesh = getattr(getattr(jax.typeof(leaf), "sharding", None), "mesh", None)
            if mesh is not None and _explicit_names(mesh):
                return mesh
    context = jax.sharding.get_abstract_mesh()
    return context if not getattr(context, "empty", True) and _explicit_names(context) else None


def row_spec(x) -> P:
    """The PartitionSpec of ``x``'s leading (row) dimensions, from its type (Explicit axes)."""
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    ndim = len(jax.typeof(x).shape)
    spec = tuple(spec) + (None,) * (ndim - len(spec)) if spec is not None else (None,) * ndim
    return P(*spec[: ndim - 1])


def spec_of(x) -> P:
    """The PartitionSpec of ``x`` from its type (replicated when its type carries none)."""
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return P() if spec is None else spec


def on_auto_axes(fn, args: tuple, out_sharding):
    """``fn(*args)``, run on the Auto view of Explicit mesh axes when any input (or the context
    mesh) has them: JAX's ``auto_axes`` converts the inputs' types, and the outputs (and the
    gradients flowing back to the inputs) to their Explicit types. jsoftmax lays its
    computation out itself (``shard_map`` over the Auto twin of a mesh), which sharding in
    types would otherwise refuse (a custom VJP's cotangent types, contractions over a sharded
    dimension). ``out_sharding``: a function of the mesh giving the outputs' PartitionSpecs."""
    mesh = explicit_mesh(args)
    if mesh is None:
        return fn(*args)
    args = jax.tree_util.tree_map(  # host arrays copied now (what a call reads is its own)
        lambda a: _inplace.private_copy(np.asarray(a)) if isinstance(a, np.ndarray) else a, args)
    current = jax.sharding.get_abstract_mesh()
    scope = contextlib.nullcontext() if current == mesh else jax.sharding.use_abstract_mesh(mesh)
    with scope:
        return jax.sharding.auto_axes(fn, axes=_explicit_names(mesh), out_sharding=out_sharding(mesh))(*args)
