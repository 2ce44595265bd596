"""Step-by-step verification of the derivation (``docs/derivation.md``) against autodiff.

Every comparison is made against a float64 reference computed in a scoped x64 context, so a
float32 or bfloat16 result is measured against the exact answer, not against itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _api, _engine, _sparse
from ._compat import enable_x64
from ._reference import reference_risk, reference_row_loss, reference_targets
from ._types import Features, Labels, Params, Plan, RowValues, Want, Weights

# Normwise relative tolerances per input dtype: float64 to a few hundred ulps of 1, float32 to
# the rounding of sums over ~10⁴ terms, 16-bit to its 8 mantissa bits.
TOLERANCES = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}
# Central differences carry an absolute truncation error ~h^2, so they get an absolute floor:
# pass when max|analytic - fd| <= atol + rtol * max|fd|.
FD_TOLERANCES = {
    "float64": (1e-8, 1e-6),
    "float32": (1e-5, 1e-4),
    "bfloat16": (2e-2, 2e-2),
    "float16": (2e-2, 2e-2),
}


@dataclasses.dataclass(frozen=True)
class CheckRow:
    """One comparison: an analytic quantity against its autodiff or numerical reference."""

    step: str
    quantity: str
    reference: str
    max_abs_error: float
    rel_error: float  # ||analytic - reference|| / ||reference|| (Frobenius)
    scaled_error: float  # ||analytic - reference|| / max(||reference||, term scale); judged
    tolerance: str
    passed: bool


@dataclasses.dataclass(frozen=True)
class GradientReport:
    """Result of :func:`check_gradient`: one :class:`CheckRow` per step of the derivation."""

    problem: dict[str, Any]
    rows: tuple[CheckRow, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": dict(self.problem),
            "passed": self.passed,
            "rows": [dataclasses.asdict(row) for row in self.rows],
        }

    def __str__(self) -> str:
        header = ", ".join(f"{k}={v}" for k, v in self.problem.items())
        return header + "\n" + format_table([dataclasses.asdict(r) for r in self.rows])


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of CheckRow dicts."""
    columns = [
        ("step", "step", "{}"),
        ("quantity", "quantity", "{}"),
        ("reference", "reference", "{}"),
        ("dtype", "dtype", "{}"),
        ("problems", "problems", "{}"),
        ("max_abs_error", "max abs err", "{:.2e}"),
        ("rel_error", "rel err", "{:.2e}"),
        ("scaled_error", "scaled err", "{:.2e}"),
        ("tolerance", "tolerance", "{}"),
        ("passed", "ok", "{}"),
    ]
    columns = [c for c in columns if all(c[0] in row for row in rows)]
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        cells.append(
            [
                ("PASS" if row[key] else "FAIL") if key == "passed" else fmt.format(row[key])
                for key, _, fmt in columns
            ]
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def softmax_jacobian(z: jax.Array) -> jax.Array:
    """Closed-form Jacobian of softmax at z (K,): diag(p) - p p^T (docs/derivation.md §2)."""
    p = jax.nn.softmax(z)
    return jnp.diag(p) - jnp.outer(p, p)


def _errors(analytic, reference) -> tuple[float, float]:
    a = np.asarray(analytic, np.float64)
    r = np.asarray(reference, np.float64)
    diff = np.abs(a - r)
    norm = np.linalg.norm(r)
    rel = float(np.linalg.norm(a - r) / norm) if norm > 0 else float(np.linalg.norm(a - r))
    return float(diff.max(initial=0.0)), rel


def _row(step, quantity, reference, analytic, expected, dtype_name, term_scale=0.0) -> CheckRow:
    """Judge ||a - r|| against tol * max(||r||, term_scale).

    ``term_scale`` is the norm of the magnitudes summed to form the reference (e.g.
    || |X|^T |c (P - T)| || + l2 ||W|| for dR/dW). Near an optimum the gradient is a small
    difference of large terms, and no floating-point summation is more accurate than eps times
    those terms; away from an optimum the scale is about ||r|| and changes nothing.
    """
    max_abs, rel = _errors(analytic, expected)
    norm = float(np.linalg.norm(np.asarray(expected, np.float64)))
    scale = max(norm, float(term_scale))
    diff = float(np.linalg.norm(np.asarray(analytic, np.float64) - np.asarray(expected, np.float64)))
    scaled = diff / scale if scale > 0 else diff
    tol = TOLERANCES[dtype_name]
    return CheckRow(step, quantity, reference, max_abs, rel, scaled, f"scaled <= {tol:g}", bool(scaled <= tol))


def check_gradient(
    params: Params | Weights,
    X: Features,
    labels: Labels,
    *,
    sample_weight: RowValues | None = None,
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    softcap: float | None = None,
    n_jacobian_rows: int = 4,
    n_fd_entries: int = 12,
    seed: int = 0,
) -> GradientReport:
    """Check each step of the derivation numerically at ``params``.

    Rows:
      1. the closed-form softmax Jacobian diag(p) - p p^T vs ``jax.jacobian(jax.nn.softmax)``
         (on the first ``n_jacobian_rows`` samples);
      2. the score gradient p * sum(t) - t (the kernel's own expression) vs ``jax.grad`` of the
         per-sample loss with respect to the scores;
      3. the analytic dR/dW (and dR/db, dR/dX) vs ``jax.grad`` of the plain-jnp reference risk,
         and the risk value itself;
      4. dR/dW (and dR/db) vs central finite differences of the reference risk on
         ``n_fd_entries`` entries drawn with ``seed``;
      5. the Hessian-vector product H·V (W and b blocks) along a normal direction V drawn with
         ``seed`` vs forward-over-reverse autodiff, ``jax.jvp`` of ``jax.grad`` of the reference.

    With ``softcap`` (c > 0: scores c·tanh(z/c), ``docs/derivation.md`` §10) steps 2–5 check
    the capped loss, whose score gradient carries the factor 1 − tanh²(z/c).

    Analytic quantities are computed in the dtype of ``X``; references in float64.
    Arguments as in :func:`jsoftmax.risk`. A sparse ``X`` (scipy.sparse, BCOO, BCSR) is checked
    through the sparse layout the library uses for it (value, dR/dW, dR/db, H·V); steps 1–2 and
    the references use its dense values, and dR/dX is not a row (a sparse X's stored values are
    data, not parameters; the gradient with respect to them is not offered).

    Returns:
      A :class:`GradientReport`; ``str(report)`` is a table, ``report.to_dict()`` a dict.
    """
    problem, spec, plan = _api.prepare(params, X, labels, sample_weight=sample_weight, l2=l2,
                                       label_smoothing=label_smoothing, ignore_index=ignore_index,
                                       softcap=softcap)
    W, b, layout, labels, sample_weight, soft = problem
    sparse = _api.layout_kind(layout) == "sparse"
    dense_X = jnp.asarray(_sparse.as_csr(X).to_dense()) if sparse else None
    X = layout if dense_X is None else dense_X
    dtype_name = jnp.dtype(X.dtype).name
    n, d = X.shape
    k = W.shape[1]
    rows_shown = min(n, n_jacobian_rows)
    # Entries for the finite differences, drawn with `seed`, and their steps h = cbrt(eps)·|p|;
    # the direction of the Hessian-vector product.
    rng = np.random.default_rng(seed)
    VW = jnp.asarray(rng.standard_normal(W.shape), W.dtype)
    Vb = None if b is None else jnp.asarray(rng.standard_normal(b.shape), W.dtype)
    analytic = _analytic_side(W, b, layout, dense_X, labels, sample_weight, l2, label_smoothing, VW, Vb,
                              spec=spec, plan=plan, rows_shown=rows_shown)
    fd_points = {}
    for name, base in (("W", W), ("b", b)):
        if base is not None:
            flat = rng.choice(base.size, size=min(n_fd_entries, base.size), replace=False)
            idx = np.unravel_index(flat, base.shape)
            steps = np.cbrt(np.finfo(np.float64).eps) * np.maximum(
                1.0, np.abs(np.asarray(base, np.float64)[idx])
            )
            offsets = np.zeros((len(flat),) + base.shape)
            offsets[(np.arange(len(flat)),) + idx] = steps
            fd_points[name] = (idx, steps, offsets)

    with enable_x64():

        def cast(a):
            return None if a is None else jnp.asarray(a, jnp.float64)

        reference = _reference_side(
            cast(W), cast(b), cast(X), cast(labels) if soft else labels, cast(sample_weight),
            float(l2), float(label_smoothing), int(ignore_index), spec.softcap, rows_shown,
            {name: jnp.asarray(point[2]) for name, point in fd_points.items()}, cast(VW), cast(Vb),
        )
        reference = jax.device_get(reference)
    analytic = jax.device_get(analytic)

    rows: list[CheckRow] = [
        _row("1", "d softmax/dz = diag(p) - pp^T", "jax.jacobian",
             analytic["jacobian"], reference["jacobian"], dtype_name),
    ]
    dz, dz_ref = analytic["dz"], reference["dz"]
    if not soft:  # ignored rows have no target; the kernel zeroes them through their weight 0
        counted = np.asarray(labels != ignore_index)[:, None]
        dz, dz_ref = np.where(counted, dz, 0), np.where(counted, dz_ref, 0)
    capped = "" if spec.softcap is None else " (x 1-(s/c)^2, capped s)"
    rows.append(_row("2", "dl/dz = p*sum(t) - t" + capped, "jax.grad", dz, dz_ref, dtype_name))
    rows.append(_row("3", "R (risk value)", "plain-jnp risk",
                     analytic["value"], reference["value"], dtype_name))
    scales = reference["term_scales"]
    rows.append(_row("3", "dR/dW = X^T(P - T)/N + l2 W", "jax.grad",
                     analytic["W"], reference["W"], dtype_name, scales["W"]))
    if b is not None:
        rows.append(_row("3", "dR/db = sum(P - T)/N", "jax.grad",
                         analytic["b"], reference["b"], dtype_name, scales["b"]))
    if not sparse:
        rows.append(_row("3", "dR/dX = (P - T) W^T / N", "jax.grad",
                         analytic["X"], reference["X"], dtype_name, scales["X"]))
    atol, rtol = FD_TOLERANCES[dtype_name]
    for name, (idx, steps, _) in fd_points.items():
        plus, minus = reference["fd"][name]
        fd = (np.asarray(plus) - np.asarray(minus)) / (2 * steps)
        max_abs, rel = _errors(np.asarray(analytic[name], np.float64)[idx], fd)
        bound = atol + rtol * float(np.max(np.abs(fd)))
        rows.append(
            CheckRow("4", f"dR/d{name} ({len(steps)} entries)", "central differences", max_abs,
                     rel, max_abs / bound, f"abs <= {atol:g} + {rtol:g}*max|fd|",
                     bool(max_abs <= bound))
        )

    rows.append(_row("5", "H_W V = X^T c(P*A - P rowsum(P*A)) + l2 V_W", "jvp of grad",
                     analytic["HW"], reference["HW"], dtype_name, scales["HW"]))
    if b is not None:
        rows.append(_row("5", "H_b V = sum c(P*A - P rowsum(P*A))", "jvp of grad",
                         analytic["Hb"], reference["Hb"], dtype_name, scales["Hb"]))

    problem_info = {
        "n": n,
        "d": d,
        "k": k,
        "X": "sparse" if sparse else "dense",
        "dtype": dtype_name,
        "labels": "soft" if soft else "int",
        "bias": b is not None,
        "sample_weight": sample_weight is not None,
        "ignored_rows": 0 if soft else int(np.sum(np.asarray(labels) == ignore_index)),
        "l2": float(l2),
        "label_smoothing": float(label_smoothing),
        "softcap": spec.softcap,
    }
    return GradientReport(problem_info, tuple(rows))


@partial(jax.jit, static_argnames=("spec", "plan", "rows_shown"))
def _analytic_side(W, b, layout, dense_X, labels, sample_weight, l2, smoothing, VW, Vb, *, spec, plan,
                   rows_shown):
    """Everything the library computes, in the problem's dtype, as one compiled program.
    ``layout``: X as the library holds it; ``dense_X``: a sparse layout's dense values (None
    for a dense X)."""
    params = Params(W, b)
    dense = dense_X is None
    X = layout if dense else dense_X
    # jax.value_and_grad of the objective runs the custom VJP: the engine's analytic gradient.
    value, grads = jax.value_and_grad(_api.objective, argnums=(0, 1) if dense else 0)(
        params, layout, labels, sample_weight, l2, smoothing, spec, plan)
    grads = grads if dense else (grads, None)
    z = _engine.scores(W, b, X)

    def row_score_gradient(z_n, y_n):
        # The engine on a one-row "head" W = z_n, x = [1]: its dW is exactly dℓ/dz of that row.
        one = jnp.ones((1, 1), z.dtype)
        ev = _engine.evaluate(z_n[None], None, one, y_n[None], jnp.ones((1,), z.dtype), smoothing,
                              0.0, spec, Plan(1), Want(grad_W=True))
        return ev.gW[0]

    HW, Hb = _api._hvp_jit(W, b, layout, labels, sample_weight, VW, Vb, l2, smoothing, spec=spec, plan=plan)
    return {
        "HW": HW,
        "Hb": Hb,
        "jacobian": jax.vmap(softmax_jacobian)(z[:rows_shown]),
        "dz": jax.vmap(row_score_gradient)(z, labels),
        "value": value,
        "W": grads[0].W,
        "b": grads[0].b,
        "X": grads[1],
    }


@partial(jax.jit, static_argnames=("ignore_index", "softcap", "rows_shown"))
def _reference_side(W, b, X, labels, sample_weight, l2, smoothing, ignore_index, softcap, rows_shown,
                    fd_offsets, VW, Vb):
    """The float64 references: autodiff of plain-jnp definitions and finite differences."""
    z = X @ W if b is None else X @ W + b
    t = reference_targets(labels, W.shape[1], label_smoothing=smoothing).astype(z.dtype)

    def capped(z_):
        return z_ if softcap is None else softcap * jnp.tanh(z_ / softcap)

    def ref(W_, b_, X_):
        return reference_risk(W_, b_, X_, labels, sample_weight=sample_weight, l2=l2,
                              label_smoothing=smoothing, ignore_index=ignore_index, softcap=softcap)

    grads = jax.grad(ref, argnums=(0, 1, 2))(W, b, X)
    # Magnitudes of the terms each gradient sums (see _row).
    if jnp.issubdtype(labels.dtype, jnp.integer):
        weights = (labels != ignore_index).astype(z.dtype)
    else:
        weights = jnp.ones(z.shape[:1], z.dtype)
    if sample_weight is not None:
        weights = weights * sample_weight
    weights = weights / jnp.sum(weights)
    terms = jnp.abs(weights[:, None] * (jax.nn.softmax(capped(z)) * t.sum(1, keepdims=True) - t))
    term_scales = {
        "W": jnp.linalg.norm(jnp.abs(X).T @ terms) + l2 * jnp.linalg.norm(W),
        "b": jnp.linalg.norm(terms.sum(0)),
        "X": jnp.linalg.norm(terms @ jnp.abs(W).T),
    }
    if b is None:
        HW, Hb = jax.jvp(lambda W_: jax.grad(ref)(W_, None, X), (W,), (VW,))[1], None
    else:
        HW, Hb = jax.jvp(lambda W_, b_: jax.grad(ref, argnums=(0, 1))(W_, b_, X), (W, b), (VW, Vb))[1]
    a = jnp.abs(X @ VW if Vb is None else X @ VW + Vb)
    p = jax.nn.softmax(capped(z))
    h_terms = weights[:, None] * t.sum(1, keepdims=True) * (p * a + p * jnp.sum(p * a, 1, keepdims=True))
    term_scales["HW"] = jnp.linalg.norm(jnp.abs(X).T @ h_terms) + l2 * jnp.linalg.norm(VW)
    term_scales["Hb"] = jnp.linalg.norm(h_terms.sum(0))
    moves = {"W": lambda o: ref(W + o, b, X), "b": lambda o: ref(W, b + o, X)}
    fd = {
        name: (jax.vmap(moves[name])(offsets), jax.vmap(moves[name])(-offsets))
        for name, offsets in fd_offsets.items()
    }
    return {
        "jacobian": jax.vmap(jax.jacobian(jax.nn.softmax))(z[:rows_shown]),
        "dz": jax.vmap(jax.grad(lambda z_, t_: reference_row_loss(capped(z_), t_)))(z, t),
        "value": ref(W, b, X),
        "W": grads[0],
        "b": grads[1],
        "X": grads[2],
        "fd": fd,
        "term_scales": term_scales,
        "HW": HW,
        "Hb": Hb,
    }


# --------------------------------------------------------------------------------------
# The default grid run by `jsoftmax verify`
# --------------------------------------------------------------------------------------

OPTION_SETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "bias": {"bias": True},
    "sample_weight": {"sample_weight": True},
    "ignore_index": {"ignore": True},
    "l2": {"l2": 0.1},
    "label_smoothing": {"label_smoothing": 0.1},
    "all": {"bias": True, "sample_weight": True, "ignore": True, "l2": 0.05, "label_smoothing": 0.2},
    "softcap": {"bias": True, "softcap": 1.5},
}
DEFAULT_SIZES = ((1, 3, 2), (16, 5, 3), (64, 10, 7), (256, 32, 50))


def random_problem(n, d, k, *, dtype=jnp.float64, seed=0, soft=False, bias=False, ignore=False,
                   weights=False, scale=1.0):
    """A seeded random problem ``(Params(W, b), X, labels, sample_weight)`` of size N×D×K.

    X standard normal; W normal with scale ``scale/√D`` (scores of order ``scale``); b standard
    normal with ``bias``; labels class ids, every third row ``-100`` with ``ignore`` (at least
    one row stays counted), or probability rows (softmax of 2·normal) with ``soft``; weights
    uniform in [0.1, 2) with ``weights``.
    """
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(dtype)
    X = jnp.asarray(rng.standard_normal((n, d)), dtype)
    W = jnp.asarray(scale * rng.standard_normal((d, k)) / math.sqrt(d), dtype)
    b = jnp.asarray(rng.standard_normal(k), dtype) if bias else None
    if soft:
        logits = 2 * rng.standard_normal((n, k))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        labels = jnp.asarray(probs / probs.sum(axis=1, keepdims=True), dtype)
    else:
        ids = rng.integers(0, k, size=n)
        if ignore and n > 1:
            ids[1::3] = -100
        labels = jnp.asarray(ids, jnp.int32)
    sample_weight = jnp.asarray(rng.uniform(0.1, 2.0, n), dtype) if weights else None
    return Params(W, b), X, labels, sample_weight


def verify_grid(
    sizes=DEFAULT_SIZES,
    dtypes=("float64", "float32"),
    option_sets=tuple(OPTION_SETS),
    label_kinds=("int", "soft"),
    seed: int = 0,
) -> list[GradientReport]:
    """check_gradient over the product of option sets, label kinds and dtypes; sizes cycle."""
    reports = []
    combos = list(itertools.product(option_sets, label_kinds))
    for dtype_name in dtypes:
        for i, (option_set, kind) in enumerate(combos):
            n, d, k = sizes[i % len(sizes)]
            with enable_x64(dtype_name == "float64"):
                spec = OPTION_SETS[option_set]
                params, X, labels, weights = random_problem(
                    n, d, k, dtype=dtype_name, soft=kind == "soft", seed=seed + i,
                    bias=spec.get("bias", False), ignore=spec.get("ignore", False),
                    weights=spec.get("sample_weight", False))
                report = check_gradient(params, X, labels, seed=seed + i, sample_weight=weights,
                                        l2=spec.get("l2", 0.0),
                                        label_smoothing=spec.get("label_smoothing", 0.0),
                                        softcap=spec.get("softcap"))
            report.problem["option_set"] = option_set
            reports.append(report)
    return reports


def summarise(reports: list[GradientReport]) -> list[dict[str, Any]]:
    """Worst error per (step, quantity, dtype) over a list of reports."""
    groups: dict[tuple[str, str, str], list[CheckRow]] = {}
    for report in reports:
        for row in report.rows:
            quantity = row.quantity.split(" (")[0] if row.step == "4" else row.quantity
            groups.setdefault((row.step, quantity, report.problem["dtype"]), []).append(row)
    summary = []
    order = sorted(groups, key=lambda key: (list(TOLERANCES).index(key[2]), key[0]))
    for step, quantity, dtype_name in order:
        rows = groups[(step, quantity, dtype_name)]
        summary.append(
            {
                "step": step,
                "quantity": quantity,
                "dtype": dtype_name,
                "problems": len(rows),
                "reference": rows[0].reference,
                "max_abs_error": max(r.max_abs_error for r in rows),
                "rel_error": max(r.rel_error for r in rows),
                "scaled_error": max(r.scaled_error for r in rows),
                "tolerance": rows[0].tolerance,
                "passed": all(r.passed for r in rows),
            }
        )
    return summary
