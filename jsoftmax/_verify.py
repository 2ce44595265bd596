r"""Step-by-step verification of the derivation (``docs/derivation.md``) against autodiff.

The report follows the derivation's four steps and names them the same way:

* step 1 (§2): the softmax Jacobian :math:`\partial\hat y/\partial z = \mathrm{diag}(\hat y) - \hat y\hat y^\top`;
* step 2 (§3): one sample's score gradient :math:`\partial\ell/\partial z = \hat y\,\Sigma t - t`;
* step 3 (§4): one sample's weight gradient :math:`\partial\ell_n/\partial W = x_n\,dz_n^\top`;
* step 4 (§4): the average, :math:`\partial R/\partial W = X^\top(\hat Y - Y)/N` (and b, X), with
  the risk itself and central finite differences;

and beyond the four steps, §8: the Hessian applied to a direction. Each row compares
jsoftmax's value — or, with ``jacobian_fn``/``score_grad_fn``/``grad_fn``, the caller's own
function — against a float64 reference computed in a scoped x64 context (autodiff of a plain
definition), so a float32 or bfloat16 result is judged against the exact answer, not against
itself. A row keeps both arrays; a failing row says where the largest difference sits and,
when the difference has a recognisable shape (a factor N, a flipped sign, a missing −ŷŷᵀ), what
it looks like.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _aot, _api, _engine, _penalty, _sparse, _validate
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
# The derivation's section of each step (docs/derivation.md).
SECTIONS = {"1": "§2", "2": "§3", "3": "§4", "4": "§4", "": "§8", "KKT": "§14"}

LEGEND = """\
Symbols (docs/derivation.md):
  X (N×D) features, W (D×K) weights, b (K) bias; Z = XW + b the scores, one row z per sample
  Ŷ = softmax(Z) row-wise, ŷ one row of it; with a soft-cap c, Ŷ = softmax(c·tanh(Z/c))
  Y the labels as rows (one-hot for class ids, or probability rows); T the targets:
    Y, or with label smoothing ε: T = (1 − ε)Y + ε/K; t one row of T
  N the number of rows; s the sample weights, 0 on ignored rows (Σs their sum; diag(s)
    multiplies row n by sₙ)
  λ the L2 strength (l2); c the soft-cap; ∘ the entrywise product; 1 a column of ones
  V = (V_W, V_b) a random direction, A = XV_W + 1V_bᵀ the scores' change along it
  step 3 is one sample's gradient x dzᵀ (dz its step-2 gradient); step 4 averages them
Columns:
  max abs err  max |value − reference|
  rel err      ‖value − reference‖ / ‖reference‖ (Frobenius)
  scaled err   ‖value − reference‖ / max(‖reference‖, the norm of the magnitudes it sums)
               (finite differences: max|value − fd| / max|fd|)
  of tol       the judged error as a fraction of what is allowed: a row passes at ≤ 1"""


@dataclasses.dataclass(frozen=True)
class CheckRow:
    """One comparison: a value against its reference, for one step of the derivation.

    ``step`` is the derivation's step ("1"–"4", or "" for a check beyond them, the Hessian of
    §8) and ``section`` its section; ``quantity`` is the formula checked, as the problem's
    options make it; ``against`` says what the reference is. ``value`` and ``reference`` keep
    the two arrays (None where a row compares a scalar), with ``axes`` naming their indices;
    :meth:`largest_differences` lists where they differ most. ``hint`` describes a failing
    difference of a recognisable shape.
    """

    step: str
    section: str
    quantity: str
    against: str
    max_abs_error: float
    rel_error: float
    scaled_error: float
    of_tolerance: float
    tolerance: str
    passed: bool
    value: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    reference: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    axes: tuple[str, ...] = ()
    hint: str = ""

    @property
    def name(self) -> str:
        """The quantity's name without its formula (``"dR/dW"``)."""
        return self.quantity.split(" = ")[0].split(" (")[0]

    def largest_differences(self, count: int = 5) -> list[dict[str, Any]]:
        """The ``count`` entries where ``value`` and ``reference`` differ most: each a dict of
        ``index`` (a tuple), ``at`` (the index in words), ``value``, ``reference``,
        ``difference``."""
        if self.value is None or self.reference is None or np.shape(self.value) != np.shape(self.reference):
            return []
        value, reference = np.asarray(self.value, np.float64), np.asarray(self.reference, np.float64)
        gap = np.abs(value - reference).ravel()
        out = []
        for flat in np.argsort(-gap, kind="stable")[:count]:
            index = tuple(int(i) for i in np.unravel_index(flat, value.shape))
            out.append({"index": index, "at": self._at(index), "value": float(value[index]),
                        "reference": float(reference[index]), "difference": float(value[index] - reference[index])})
        return out

    def _at(self, index: tuple[int, ...]) -> str:
        if len(self.axes) != len(index):
            return str(list(index))
        return ", ".join(f"{axis} {i}" for axis, i in zip(self.axes, index))

    def where(self) -> str:
        """Where the largest difference sits, in words (empty when the row holds no arrays)."""
        top = self.largest_differences(1)
        if not top:
            return ""
        t = top[0]
        return (f"largest difference at {t['at']}: {t['value']:.6g} against {t['reference']:.6g} "
                f"(difference {t['difference']:.3g})")

    def to_dict(self) -> dict[str, Any]:
        """The row without its arrays (JSON-serialisable)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("value", "reference")}
        row["axes"] = list(self.axes)
        return row


@dataclasses.dataclass(frozen=True)
class GradientReport:
    """Result of :func:`check_gradient`: one :class:`CheckRow` per check, in the derivation's
    order; ``str(report)`` is a table followed by what each failing row found."""

    problem: dict[str, Any]
    rows: tuple[CheckRow, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failed(self) -> tuple[CheckRow, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": dict(self.problem),
            "passed": self.passed,
            "rows": [row.to_dict() for row in self.rows],
        }

    def legend(self) -> str:
        """What every symbol and column of the table means."""
        return LEGEND

    def __str__(self) -> str:
        header = ", ".join(f"{k}={v}" for k, v in self.problem.items())
        lines = [header, format_table([row.to_dict() for row in self.rows])]
        for row in self.failed:
            label = f"step {row.step} ({row.section})" if row.step else row.section
            found = "; ".join(part for part in (row.where(), row.hint) if part)
            lines.append(f"FAIL {label} {row.quantity} against {row.against}" + (f": {found}" if found else ""))
        return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of CheckRow dicts (``CheckRow.to_dict()`` or ``summarise``'s rows)."""
    columns = [
        ("step", "step", "{}"),
        ("quantity", "quantity", "{}"),
        ("against", "against", "{}"),
        ("dtype", "dtype", "{}"),
        ("problems", "problems", "{}"),
        ("max_abs_error", "max abs err", "{:.2e}"),
        ("rel_error", "rel err", "{:.2e}"),
        ("scaled_error", "scaled err", "{:.2e}"),
        ("of_tolerance", "of tol", "{:.2g}"),
        ("tolerance", "tolerance", "{}"),
        ("passed", "ok", "{}"),
    ]
    columns = [c for c in columns if all(c[0] in row for row in rows)]
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            if key == "passed":
                line.append("PASS" if row[key] else "FAIL")
            elif key == "step":
                line.append(f"{row['step']} {row['section']}" if row["step"] else row["section"])
            else:
                line.append(fmt.format(row[key]))
        cells.append(line)
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


def _row(step, quantity, against, analytic, expected, dtype_name, term_scale=0.0, *, axes=(),
         hint: Callable[[np.ndarray, np.ndarray], str] | None = None) -> CheckRow:
    """Judge ||a - r|| against tol * max(||r||, term_scale).

    ``term_scale`` is the norm of the magnitudes summed to form the reference (e.g.
    || |X|^T |c (P - T)| || + l2 ||W|| for dR/dW). Near an optimum the gradient is a small
    difference of large terms, and no floating-point summation is more accurate than eps times
    those terms; away from an optimum the scale is about ||r|| and changes nothing.
    """
    a, r = np.asarray(analytic, np.float64), np.asarray(expected, np.float64)
    if a.shape != r.shape:
        message = f"the value has shape {a.shape}, the reference {r.shape}"
        if a.ndim == 2 and a.shape == r.shape[::-1]:
            message += ": transposed?"
        return CheckRow(step, SECTIONS[step], quantity, against, math.inf, math.inf, math.inf, math.inf,
                        f"scaled <= {TOLERANCES[dtype_name]:g}", False, a, r, axes, message)
    max_abs, rel = _errors(a, r)
    scale = max(float(np.linalg.norm(r)), float(term_scale))
    diff = float(np.linalg.norm(a - r))
    scaled = diff / scale if scale > 0 else diff
    tol = TOLERANCES[dtype_name]
    passed = bool(scaled <= tol)
    found = "" if passed or hint is None else hint(a, r)
    return CheckRow(step, SECTIONS[step], quantity, against, max_abs, rel, scaled, scaled / tol,
                    f"scaled <= {tol:g}", passed, None if a.ndim == 0 else a, None if r.ndim == 0 else r,
                    axes, found)


def _factor_hint(count_name: str, count: float) -> Callable[[np.ndarray, np.ndarray], str]:
    """A failing value that is the reference times a constant: say which constant, and what a
    factor of N (the average's 1/N) or −1 (ŷ and y swapped) would mean."""

    def hint(a: np.ndarray, r: np.ndarray) -> str:
        rr = float(np.vdot(r, r))
        if rr == 0:
            return ""
        factor = float(np.vdot(a, r)) / rr
        if np.linalg.norm(a - factor * r) > 1e-6 * max(np.linalg.norm(a), 1e-300):
            return ""
        if abs(factor + 1) < 1e-6:
            return "the value is −1 × the reference: the sign is flipped (ŷ and y swapped in step 2?)"
        if count > 1 and abs(factor / count - 1) < 1e-6:
            return (f"the value is {count_name} = {count:g} × the reference: the average's 1/{count_name} "
                    "(step 4) is missing")
        if count > 1 and abs(factor * count - 1) < 1e-6:
            return f"the value is 1/{count_name} × the reference: divided by {count_name} once too often"
        return f"the value is {factor:.6g} × the reference"

    return hint


def _jacobian_hint(a: np.ndarray, r: np.ndarray) -> str:
    """Softmax Jacobians (rows, K, K) that are diagonal where the reference is not: the −ŷŷᵀ
    term (the i ≠ m case) is missing; otherwise a constant factor, if there is one."""
    if a.ndim == 3:
        off = ~np.eye(a.shape[-1], dtype=bool)
        if np.all(np.abs(a[:, off]) <= 1e-12 * max(np.abs(a).max(), 1e-300)) and np.abs(r[:, off]).max() > 0:
            return "the value is diagonal: the −ŷŷᵀ term (step 1's i ≠ m case, −ŷᵢŷₘ) is missing"
    return _factor_hint("N", 1.0)(a, r)


def _problem_words(*, weighted: bool, ignored: bool, l2: float, smoothing: float, soft: bool,
                   softcap) -> dict[str, str]:
    """The formulas each row checks, as the problem's options make them (see ``LEGEND``)."""
    T = "T" if smoothing else "Y"
    cap = softcap is not None
    mean = "/Σs" if (weighted or ignored) else "/N"
    rows = "diag(s)" if (weighted or ignored) else ""
    dz = f"(Ŷ − {T})∘(1 − tanh²(Z/c))" if cap else f"(Ŷ − {T})"
    dl = "∂ℓ/∂z = ŷΣt − t"
    if cap:
        dl = "∂ℓ/∂z = (ŷΣt − t)∘(1 − tanh²(z/c))"
    penalty = " + λW" if l2 else ""
    return {
        "jacobian": "∂ŷ/∂z = diag(ŷ) − ŷŷᵀ",
        "dz": dl + (", t = (1 − ε)y + ε/K" if smoothing else ""),
        "row_W": "∂ℓₙ/∂W = xₙ dzₙᵀ",
        "value": f"R = Σ{'s' if (weighted or ignored) else ''}ℓ{mean}" + (" + λ‖W‖²/2" if l2 else ""),
        "W": f"dR/dW = Xᵀ{rows}{dz}{mean}{penalty}",
        "b": f"dR/db = 1ᵀ{rows}{dz}{mean}",
        "X": f"dR/dX = {rows}{dz}Wᵀ{mean}",
        "HW": f"H_W V = Xᵀ{rows}(Ŷ∘A − Ŷ∘rowsum(Ŷ∘A)){mean}{' + λV_W' if l2 else ''}"
              + (" (capped: + curvature of the cap)" if cap else ""),
        "Hb": f"H_b V = 1ᵀ{rows}(Ŷ∘A − Ŷ∘rowsum(Ŷ∘A)){mean}",
        "targets": "soft" if soft else "int",
    }


def _numpy(a):
    return None if a is None else np.asarray(a)


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
    l1: float = 0.0,
    kkt_tol: float | None = None,
    n_jacobian_rows: int = 4,
    n_fd_entries: int = 12,
    seed: int = 0,
    jacobian_fn: Callable | None = None,
    score_grad_fn: Callable | None = None,
    grad_fn: Callable | None = None,
) -> GradientReport:
    r"""Check each step of the derivation numerically at ``params`` — jsoftmax's, or yours.

    Rows, numbered as ``docs/derivation.md`` numbers its steps:

    1. (§2) the softmax Jacobian diag(ŷ) − ŷŷᵀ vs ``jax.jacobian(jax.nn.softmax)``, on the
       first ``n_jacobian_rows`` counted samples;
    2. (§3) the score gradient ŷ·Σt − t (the engine's own expression) vs ``jax.grad`` of the
       per-sample loss with respect to the scores, on every counted sample;
    3. (§4) one sample's weight gradient xₙdzₙᵀ (the engine on that row alone) vs ``jax.grad``
       of its loss with respect to W, on the first ``n_jacobian_rows`` counted samples;
    4. (§4) the average: the risk R, ∂R/∂W (and ∂R/∂b, ∂R/∂X) vs ``jax.grad`` of a plain risk
       written from §1, and ∂R/∂W (∂R/∂b) vs central finite differences of it on
       ``n_fd_entries`` entries drawn with ``seed``;
    5. beyond the four steps, (§8) the Hessian-vector product H·V along a normal direction V
       drawn with ``seed`` vs ``jax.jvp`` of ``jax.grad`` of the plain risk;
    6. with an L1 strength ``l1`` (§14), the pseudo-gradient ◇F of R + l1‖W‖₁ — the library's,
       from its analytic gradient — vs the subdifferential written out case by case from the
       plain risk's ``jax.grad``; and with ``kkt_tol``, the KKT conditions of a fitted model:
       max|◇F| (from that independent gradient) ≤ ``kkt_tol``.

    Each quantity's label is the formula checked, with the problem's weights, ignored rows, L2,
    smoothing and soft-cap in it; ``report.legend()`` defines every symbol.

    Your own functions (NumPy or JAX; each is called on NumPy arrays in X's dtype, outside
    ``jit``) are checked against the step they implement, each in a row of its own:

    * ``jacobian_fn(z) -> (K, K)``: the softmax Jacobian at one row of scores z (K,): step 1;
    * ``score_grad_fn(z, t) -> (K,)``: ∂ℓ/∂z of one sample, with t (K,) its target row
      (one-hot for a class id, smoothed with ``label_smoothing``): step 2;
    * ``grad_fn(params, X, labels) -> gradient``: ∂R/∂W (and ∂R/∂b), the same structure as
      ``params`` (a ``Params``, or W alone for a bare W), of the same risk — with the
      ``sample_weight``, ``l2`` and ``label_smoothing`` given here: step 4, against autodiff of
      the plain risk and against jsoftmax's analytic gradient.

    A failing row keeps both arrays (``row.value``, ``row.reference``,
    ``row.largest_differences()``), and the report's text says where the largest difference
    sits (which sample, class or feature) and, when the difference is a constant factor or a
    missing term, what it looks like.

    Analytic quantities are computed in the dtype of ``X``; references in float64. NumPy
    float64 inputs are computed in float64 in a scoped x64 context, whatever JAX's global flag.
    Arguments as in :func:`jsoftmax.risk`. A sparse ``X`` (scipy.sparse, BCOO, BCSR) is checked
    through the sparse layout the library uses for it (value, ∂R/∂W, ∂R/∂b, H·V); the
    per-sample steps and the references use its dense values, and ∂R/∂X is not a row (a sparse
    X's stored values are data, not parameters).

    Returns:
      A :class:`GradientReport`; ``str(report)`` is a table, ``report.to_dict()`` a dict.

    Example:
      >>> import numpy as np, jsoftmax
      >>> rng = np.random.default_rng(0)
      >>> X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
      >>> W = np.zeros((5, 3))
      >>> def my_grad(W, X, y):          # forgot the average's 1/N
      ...     P = np.exp(X @ W) / np.exp(X @ W).sum(1, keepdims=True)
      ...     return X.T @ (P - np.eye(3)[y])
      >>> report = jsoftmax.check_gradient(W, X, y, grad_fn=my_grad)
      >>> [row.step for row in report.failed]
      ['4', '4']
      >>> print(report.failed[0].hint)
      the value is N = 16 × the reference: the average's 1/N (step 4) is missing
    """
    if _wants_float64(params, X, sample_weight) and jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
        with enable_x64(True):
            return _check_gradient(params, X, labels, sample_weight, l2, label_smoothing, ignore_index, softcap,
                                   n_jacobian_rows, n_fd_entries, seed, jacobian_fn, score_grad_fn, grad_fn,
                                   l1, kkt_tol)
    return _check_gradient(params, X, labels, sample_weight, l2, label_smoothing, ignore_index, softcap,
                           n_jacobian_rows, n_fd_entries, seed, jacobian_fn, score_grad_fn, grad_fn, l1, kkt_tol)


def _wants_float64(params, X, sample_weight) -> bool:
    """NumPy (or scipy.sparse) float64 data or parameters: the caller's numbers are float64."""
    leaves = [X, sample_weight, *(params if isinstance(params, tuple) else (params,))]
    return any(not isinstance(a, jax.Array) and getattr(a, "dtype", None) == np.float64 for a in leaves
               if a is not None)


def _check_gradient(params, X, labels, sample_weight, l2, label_smoothing, ignore_index, softcap,
                    n_jacobian_rows, n_fd_entries, seed, jacobian_fn, score_grad_fn, grad_fn, l1=0.0,
                    kkt_tol=None) -> GradientReport:
    for name, fn in (("jacobian_fn", jacobian_fn), ("score_grad_fn", score_grad_fn), ("grad_fn", grad_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"`{name}` must be a function; got {type(fn).__name__}.")
    _validate.check_scalar(l1, "l1", low=0.0, high=None)
    if kkt_tol is not None:
        _validate.check_scalar(kkt_tol, "kkt_tol", low=0.0, high=None)
        if not l1 > 0:
            raise ValueError("`kkt_tol` checks the KKT conditions of an L1-penalised fit: give its `l1` too.")
    bare = not isinstance(params, Params)
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
    counted = np.ones(n, bool) if soft else np.asarray(labels) != ignore_index
    shown = np.flatnonzero(counted)[:max(1, n_jacobian_rows)]  # the per-sample steps' rows
    # Entries for the finite differences, drawn with `seed`, and their steps h = cbrt(eps)·|p|;
    # the direction of the Hessian-vector product.
    rng = np.random.default_rng(seed)
    VW = jnp.asarray(rng.standard_normal(W.shape), W.dtype)
    Vb = None if b is None else jnp.asarray(rng.standard_normal(b.shape), W.dtype)
    analytic = _aot.call(_analytic_side, (W, b, layout, dense_X, labels, sample_weight, l2, label_smoothing,
                                          VW, Vb, jnp.asarray(shown)), {"spec": spec, "plan": plan})
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

        reference = _aot.call(_reference_side, (
            cast(W), cast(b), cast(X), cast(labels) if soft else labels, cast(sample_weight),
            float(l2), float(label_smoothing), jnp.asarray(shown),
            {name: jnp.asarray(point[2]) for name, point in fd_points.items()}, cast(VW), cast(Vb),
        ), {"ignore_index": int(ignore_index), "softcap": spec.softcap})
        reference = jax.device_get(reference)
    analytic = jax.device_get(analytic)
    weighted = sample_weight is not None
    ignored = int(np.sum(~counted))
    words = _problem_words(weighted=weighted, ignored=bool(ignored), l2=float(l2), smoothing=float(label_smoothing),
                           soft=soft, softcap=spec.softcap)
    total = float(np.sum(np.asarray(sample_weight, np.float64)[counted])) if weighted else float(np.sum(counted))
    count_name = "Σs" if weighted else "N"
    factor = _factor_hint(count_name, total)
    scales = reference["term_scales"]
    dz, dz_ref = analytic["dz"], reference["dz"]
    dz, dz_ref = np.where(counted[:, None], dz, 0), np.where(counted[:, None], dz_ref, 0)

    rows: list[CheckRow] = [
        _row("1", words["jacobian"], "jax.jacobian(softmax)", analytic["jacobian"], reference["jacobian"],
             dtype_name, axes=("sample", "i", "m"), hint=_jacobian_hint),
    ]
    X_np, targets = _numpy(X), np.asarray(reference["targets"])
    if jacobian_fn is not None:
        z_rows = np.asarray(analytic["z"])[shown]
        yours = np.stack([np.asarray(jacobian_fn(z_row.astype(X_np.dtype))) for z_row in z_rows])
        rows.append(_row("1", "your jacobian_fn: ∂ŷ/∂z", "jax.jacobian(softmax)", yours, reference["jacobian"],
                         dtype_name, axes=("sample", "i", "m"), hint=_jacobian_hint))
    rows.append(_row("2", words["dz"], "jax.grad of ℓ", dz, dz_ref, dtype_name, axes=("sample", "class"),
                     hint=_factor_hint("N", 1.0)))
    if score_grad_fn is not None:
        yours = np.stack([np.asarray(score_grad_fn(s_row.astype(X_np.dtype), t.astype(X_np.dtype)))
                          for s_row, t in zip(np.asarray(reference["s"]), targets[shown])])
        rows.append(_row("2", "your score_grad_fn: ∂ℓ/∂z", "jax.grad of ℓ", yours, reference["ds"], dtype_name,
                         axes=("sample", "class"), hint=_factor_hint("N", 1.0)))
    rows.append(_row("3", words["row_W"], "jax.grad of ℓₙ", analytic["row_W"], reference["row_W"], dtype_name,
                     reference["row_scale"], axes=("sample", "feature", "class"), hint=_factor_hint("N", 1.0)))
    rows.append(_row("4", words["value"], "plain-jnp risk", analytic["value"], reference["value"], dtype_name))
    rows.append(_row("4", words["W"], "jax.grad of R", analytic["W"], reference["W"], dtype_name, scales["W"],
                     axes=("feature", "class"), hint=factor))
    if b is not None:
        rows.append(_row("4", words["b"], "jax.grad of R", analytic["b"], reference["b"], dtype_name, scales["b"],
                         axes=("class",), hint=factor))
    if not sparse:
        rows.append(_row("4", words["X"], "jax.grad of R", analytic["X"], reference["X"], dtype_name, scales["X"],
                         axes=("sample", "feature"), hint=factor))
    if grad_fn is not None:
        given = Params(_numpy(W), _numpy(b))
        out = grad_fn(given.W if bare else given, X_np, _numpy(labels))
        parts = {"W": out} if bare or not isinstance(out, tuple) else {"W": out[0], "b": out[1]}
        for name, value in parts.items():
            if value is None or (name == "b" and b is None):
                continue
            axes = ("feature", "class") if name == "W" else ("class",)
            rows.append(_row("4", f"your grad_fn: dR/d{name}", "jax.grad of R", np.asarray(value),
                             reference[name], dtype_name, scales[name], axes=axes, hint=factor))
            rows.append(_row("4", f"your grad_fn: dR/d{name}", f"jsoftmax's analytic dR/d{name}", np.asarray(value),
                             analytic[name], dtype_name, scales[name], axes=axes, hint=factor))
    atol, rtol = FD_TOLERANCES[dtype_name]
    for name, (idx, steps, _) in fd_points.items():
        plus, minus = reference["fd"][name]
        fd = (np.asarray(plus) - np.asarray(minus)) / (2 * steps)
        value = np.asarray(analytic[name], np.float64)[idx]
        max_abs, rel = _errors(value, fd)
        peak = float(np.max(np.abs(fd)))
        bound = atol + rtol * peak
        rows.append(CheckRow("4", "§4", f"dR/d{name} ({len(steps)} entries)", "central differences", max_abs, rel,
                             max_abs / peak if peak > 0 else max_abs, max_abs / bound,
                             f"abs <= {atol:g} + {rtol:g}*max|fd|", bool(max_abs <= bound), value, fd, ("entry",)))

    rows.append(_row("", words["HW"], "jvp of grad", analytic["HW"], reference["HW"], dtype_name, scales["HW"],
                     axes=("feature", "class")))
    if b is not None:
        rows.append(_row("", words["Hb"], "jvp of grad", analytic["Hb"], reference["Hb"], dtype_name, scales["Hb"],
                         axes=("class",)))

    if l1 > 0:
        rows += _kkt_rows(W, b, analytic, reference, float(l1), kkt_tol, dtype_name, scales)
        if kkt_tol is not None and spec.softcap is None:  # the conjugate of §14 is the plain loss's
            row_weights = counted * (1.0 if sample_weight is None else np.asarray(sample_weight, np.float64))
            rows.append(_gap_row(W, b, X_np, targets, row_weights, float(l1), float(l2)))

    problem_info = {
        "n": n,
        "d": d,
        "k": k,
        "X": "sparse" if sparse else "dense",
        "dtype": dtype_name,
        "labels": words["targets"],
        "bias": b is not None,
        "sample_weight": weighted,
        "ignored_rows": ignored,
        "l2": float(l2),
        "label_smoothing": float(label_smoothing),
        "softcap": spec.softcap,
        "l1": float(l1),
    }
    return GradientReport(problem_info, tuple(rows))


def _subgradient_reference(w: np.ndarray, g: np.ndarray, lam: float) -> np.ndarray:
    """The pseudo-gradient of §14 written out case by case in NumPy (independently of
    ``_penalty``): the element of g + λ∂|w| nearest 0."""
    cases = [w != 0, g > lam, g < -lam]
    return np.select(cases, [g + lam * np.sign(w), g - lam, g + lam], default=0.0)


def _kkt_rows(W, b, analytic, reference, l1: float, kkt_tol, dtype_name, scales) -> list[CheckRow]:
    """§14: the library's pseudo-gradient against the written-out one; with ``kkt_tol`` the
    KKT violation of the point (a fitted model's) against its bound."""
    w = np.asarray(W, np.float64)
    ours = np.asarray(_penalty.pseudo_gradient(jnp.asarray(w), jnp.asarray(np.asarray(analytic["W"], np.float64)),
                                               jnp.asarray(l1, jnp.float64) if w.dtype == np.float64 else l1),
                      np.float64)
    theirs = _subgradient_reference(w, np.asarray(reference["W"], np.float64), l1)
    rows = [_row("KKT", "◇F = ∂R/∂W + λ₁∂|W| (pseudo-gradient)", "the subdifferential, case by case", ours, theirs,
                 dtype_name, scales["W"], axes=("feature", "class"))]
    if kkt_tol is not None:
        parts = [np.abs(theirs).ravel()] + ([] if b is None else [np.abs(np.asarray(reference["b"], np.float64))])
        violation = float(np.max(np.concatenate(parts)))
        zeros = int(np.sum(w == 0))
        rows.append(CheckRow("KKT", SECTIONS["KKT"], f"KKT violation max|◇F| ({zeros} of {w.size} weights exactly 0)",
                             "0 at the minimiser", violation, violation, violation,
                             violation / kkt_tol if kkt_tol > 0 else (0.0 if violation == 0 else math.inf),
                             f"<= kkt_tol = {kkt_tol:g}", bool(violation <= kkt_tol)))
    return rows


def _gap_row(W, b, X, targets, weights, l1: float, l2: float) -> CheckRow:
    """§14's certificate: the duality gap P − D of the point, from a dual point built out of its
    probabilities. Weak duality makes it ≥ 0 for any point; a negative gap beyond rounding
    means the primal or the dual is computed wrongly."""
    gap = _penalty.duality_gap(W, b, X, targets, weights, l1, l2)
    rounding = 64 * np.finfo(np.float64).eps * max(1.0, abs(float(gap)))
    return CheckRow("KKT", SECTIONS["KKT"], "duality gap P − D (an upper bound on P − min P)",
                    "weak duality: ≥ 0", gap, gap, gap, 0.0 if gap >= -rounding else math.inf,
                    "≥ 0 (rounding aside)", bool(gap >= -rounding))


@partial(jax.jit, static_argnames=("spec", "plan"))
def _analytic_side(W, b, layout, dense_X, labels, sample_weight, l2, smoothing, VW, Vb, shown, *, spec, plan):
    """Everything the library computes, in the problem's dtype, as one compiled program.
    ``layout``: X as the library holds it; ``dense_X``: a sparse layout's dense values (None
    for a dense X); ``shown``: the rows of the per-sample steps."""
    params = Params(W, b)
    dense = dense_X is None
    X = layout if dense else dense_X
    # jax.value_and_grad of the objective runs the custom VJP: the engine's analytic gradient.
    value, grads = jax.value_and_grad(_api.objective, argnums=(0, 1) if dense else 0)(
        params, layout, labels, sample_weight, l2, smoothing, spec, plan)
    grads = grads if dense else (grads, None)
    z = _engine.scores(W, b, X)
    one = jnp.ones((1,), z.dtype)

    def row_score_gradient(z_n, y_n):
        # The engine on a one-row "head" W = z_n, x = [1]: its dW is exactly dℓ/dz of that row.
        ev = _engine.evaluate(z_n[None], None, jnp.ones((1, 1), z.dtype), y_n[None], one, smoothing,
                              0.0, spec, Plan(1), Want(grad_W=True))
        return ev.gW[0]

    def row_weight_gradient(x_n, y_n):
        # The engine on one sample: its dW is that sample's xₙdzₙᵀ (step 3).
        return _engine.evaluate(W, b, x_n[None], y_n[None], one, smoothing, 0.0, spec, Plan(1),
                                Want(grad_W=True)).gW

    HW, Hb = _api._hvp_jit(W, b, layout, labels, sample_weight, VW, Vb, l2, smoothing, spec=spec, plan=plan)
    return {
        "HW": HW,
        "Hb": Hb,
        "z": z,
        "jacobian": jax.vmap(softmax_jacobian)(z[shown]),
        "dz": jax.vmap(row_score_gradient)(z, labels),
        "row_W": jax.vmap(row_weight_gradient)(X[shown], labels[shown]),
        "value": value,
        "W": grads[0].W,
        "b": grads[0].b,
        "X": grads[1],
    }


@partial(jax.jit, static_argnames=("ignore_index", "softcap"))
def _reference_side(W, b, X, labels, sample_weight, l2, smoothing, shown, fd_offsets, VW, Vb, *, ignore_index,
                    softcap):
    """The float64 references: autodiff of plain-jnp definitions and finite differences."""
    z = X @ W if b is None else X @ W + b
    t = reference_targets(labels, W.shape[1], label_smoothing=smoothing).astype(z.dtype)

    def capped(z_):
        return z_ if softcap is None else softcap * jnp.tanh(z_ / softcap)

    def ref(W_, b_, X_):
        return reference_risk(W_, b_, X_, labels, sample_weight=sample_weight, l2=l2,
                              label_smoothing=smoothing, ignore_index=ignore_index, softcap=softcap)

    def row_loss(W_, x_n, t_n):
        z_n = x_n @ W_ if b is None else x_n @ W_ + b
        return reference_row_loss(capped(z_n), t_n)

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
    row_terms = jnp.abs(X[shown])[:, :, None] * jnp.abs(p[shown] * t[shown].sum(1, keepdims=True) - t[shown])[:, None, :]
    return {
        "jacobian": jax.vmap(jax.jacobian(jax.nn.softmax))(z[shown]),
        # Step 2 for a caller's function: ∂ℓ/∂s at the scores s the softmax sees (capped ones).
        "s": capped(z)[shown],
        "ds": jax.vmap(jax.grad(reference_row_loss))(capped(z)[shown], t[shown]),
        "dz": jax.vmap(jax.grad(lambda z_, t_: reference_row_loss(capped(z_), t_)))(z, t),
        "row_W": jax.vmap(jax.grad(row_loss), in_axes=(None, 0, 0))(W, X[shown], t[shown]),
        "row_scale": jnp.linalg.norm(row_terms),
        "targets": t,
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
    "l1": {"bias": True, "l2": 0.02, "l1": 0.02},
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


def verify_problem(n: int, d: int, k: int, *, dtype: str = "float64", option_set: str = "plain",
                   labels: str = "int", seed: int = 0, bare: bool = False, fit_with: Callable | None = None,
                   kkt_tol: float | None = None, **functions) -> GradientReport:
    """check_gradient on one seeded :func:`random_problem` of size N×D×K with the options of
    ``OPTION_SETS[option_set]``, computed in ``dtype``; ``bare``: a problem without a bias is
    given as W alone (what a learner's ``grad(W, X, y)`` takes). ``functions``: the caller's
    ``jacobian_fn``/``score_grad_fn``/``grad_fn``. ``fit_with(params, X, y, weights, options)``:
    the parameters to check at instead of the random ones (a fit, e.g. of the option set's L1
    penalty, whose KKT conditions ``kkt_tol`` then bounds)."""
    spec = OPTION_SETS[option_set]
    with enable_x64(dtype == "float64"):
        params, X, y, weights = random_problem(
            n, d, k, dtype=dtype, soft=labels == "soft", seed=seed, bias=spec.get("bias", False),
            ignore=spec.get("ignore", False), weights=spec.get("sample_weight", False))
        if fit_with is not None:
            params = fit_with(params, X, y, weights, spec)
        report = check_gradient(params.W if bare and params.b is None else params, X, y, seed=seed,
                                sample_weight=weights, l2=spec.get("l2", 0.0), l1=spec.get("l1", 0.0),
                                kkt_tol=kkt_tol, label_smoothing=spec.get("label_smoothing", 0.0),
                                softcap=spec.get("softcap"), **functions)
    report.problem["option_set"] = option_set
    return report


def verify_grid(
    sizes=DEFAULT_SIZES,
    dtypes=("float64", "float32"),
    option_sets=tuple(OPTION_SETS),
    label_kinds=("int", "soft"),
    seed: int = 0,
) -> list[GradientReport]:
    """check_gradient over the product of option sets, label kinds and dtypes; sizes cycle."""
    combos = list(itertools.product(option_sets, label_kinds))
    return [verify_problem(*sizes[i % len(sizes)], dtype=dtype_name, option_set=option_set, labels=kind,
                           seed=seed + i)
            for dtype_name in dtypes for i, (option_set, kind) in enumerate(combos)]


def summarise(reports: list[GradientReport]) -> list[dict[str, Any]]:
    """Worst error per (step, quantity, what it is checked against, dtype) over a list of
    reports; a quantity is named without its formula (which changes with each problem's
    options), so that a grid's rows group by step."""
    groups: dict[tuple[str, str, str, str], list[CheckRow]] = {}
    for report in reports:
        for row in report.rows:
            groups.setdefault((row.step, row.name, row.against, report.problem["dtype"]), []).append(row)
    order = sorted(groups, key=lambda key: (list(TOLERANCES).index(key[3]), key[0] == "", key[0]))
    summary = []
    for step, name, against, dtype_name in order:
        rows = groups[(step, name, against, dtype_name)]
        summary.append(
            {
                "step": step,
                "section": rows[0].section,
                "quantity": name,
                "against": against,
                "dtype": dtype_name,
                "problems": len(rows),
                "max_abs_error": max(r.max_abs_error for r in rows),
                "rel_error": max(r.rel_error for r in rows),
                "scaled_error": max(r.scaled_error for r in rows),
                "of_tolerance": max(r.of_tolerance for r in rows),
                "tolerance": rows[0].tolerance,
                "passed": all(r.passed for r in rows),
            }
        )
    return summary
