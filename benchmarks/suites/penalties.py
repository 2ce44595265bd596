"""L1 and elastic-net fits against scikit-learn's saga: ``python -m benchmarks.run --suite penalties``.

The fit suite's penalised part. Both minimise scikit-learn's objective
C Σ ℓ + ρ‖coef‖₁ + (1 − ρ)/2 ‖coef‖² (jsoftmax in its scaled form, by OWL-QN):

- standardised digits, wine and breast_cancer, ρ = 1 (L1) and 0.5, C = 0.1 and 1: scikit-learn's
  ``LogisticRegression(solver="saga", tol=1e-6)`` with one BLAS thread against
  ``SoftmaxRegression(l1_ratio=ρ, tol=1e-8)`` (tol on the KKT violation), the latter's first
  call (compilation) apart from the median of the calls after it;
- a news20-shaped sparse problem (``benchmarks/sparse_data.py``), ρ = 1, C = 1;
- a path of 20 values of C on digits (ρ = 1, from C at λ_max down to 1000× smaller):
  ``jsoftmax.regularization_path`` (one program, warm-started) against the same 20 saga fits,
  each warm-started from the previous (``warm_start=True``);
- the (l1_ratio × C × fold) search on wine and breast_cancer: ``SoftmaxRegressionCV`` against
  ``LogisticRegressionCV(solver="saga")`` with the same grid, folds and scoring.

For every fit: the time ratio (jsoftmax after compiling over scikit-learn's), both objectives
(ours ≤ theirs is the target), both KKT violations and duality gaps (of the scaled objective,
the same functions evaluated at both coefficient sets; ``docs/derivation.md`` §14), and whether
the supports agree up to entries below 1e-8.
"""

from __future__ import annotations

import statistics
import time
import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import jsoftmax
from jsoftmax._compat import enable_x64
from jsoftmax._penalty import duality_gap

from .. import common

CASES = [(rho, C) for rho in (1.0, 0.5) for C in (0.1, 1.0)]
REPEATS = 3
SAGA_EPOCHS = 10_000  # saga's cap (epochs); a capped fit is marked and its time is the cap's


def _dense_problems(quick: bool):
    loaders = {"digits": load_digits, "wine": load_wine, "breast_cancer": load_breast_cancer}
    for name in (("wine",) if quick else loaders):
        X, y = loaders[name](return_X_y=True)
        yield name, StandardScaler().fit_transform(X), y


def kkt_violation(coef, intercept, X, y, C, rho) -> float:
    """max|◇F| of the scaled objective mean ℓ + λ₁‖W‖₁ + λ/2‖W‖² at scikit-learn-layout
    coefficients (multinomial K rows, or one binomial row), in float64 NumPy."""
    coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    n = len(y)
    classes = np.unique(y)
    ids = np.searchsorted(classes, y)
    if coef.shape[0] == 1:  # binomial: p = σ(xw + b), ∂/∂w = Xᵀ(p − y)/N
        z = np.asarray(X @ coef[0]) + intercept[0]
        p = 1 / (1 + np.exp(-z))
        gW, gb = X.T @ (p - ids) / n, np.array([np.mean(p - ids)])
        W = coef[0]
    else:
        Z = np.asarray(X @ coef.T) + intercept
        Z -= Z.max(1, keepdims=True)
        P = np.exp(Z)
        P /= P.sum(1, keepdims=True)
        P[np.arange(n), ids] -= 1
        gW, gb, W = X.T @ P / n, P.mean(0), coef.T
    l1, l2 = rho / (C * n), (1 - rho) / (C * n)
    g = np.asarray(gW) + l2 * W
    pg = np.where(W > 0, g + l1, np.where(W < 0, g - l1, np.sign(g) * np.maximum(np.abs(g) - l1, 0)))
    return float(max(np.abs(pg).max(), np.abs(gb).max()))


def gap(coef, intercept, X, y, C, rho) -> float:
    """The duality gap P − D of the scaled objective at scikit-learn-layout coefficients: the
    multinomial model as is; a binomial row c as the symmetric softmax (−c/2, c/2), whose
    objective with λ doubled is the same (see ``jsoftmax.sklearn.common.penalty_strengths``)."""
    coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    n = len(y)
    ids = np.searchsorted(np.unique(y), y)
    if coef.shape[0] == 1:
        W, b, l2 = np.stack([-coef[0], coef[0]], axis=1) / 2, np.array([-intercept[0], intercept[0]]) / 2, 2.0
    else:
        W, b, l2 = coef.T, intercept, 1.0
    k = W.shape[1]
    return duality_gap(W, b, X, np.eye(k)[ids], np.ones(n), rho / (C * n), l2 * (1 - rho) / (C * n))


def objective(model, X, y, C, rho) -> float:
    log_p = model.predict_log_proba(X)
    data = -np.sum(log_p[np.arange(len(y)), np.searchsorted(model.classes_, y)])
    coef = np.asarray(model.coef_, np.float64)
    return float(C * data + rho * np.abs(coef).sum() + 0.5 * (1 - rho) * np.sum(coef**2))


def _saga(X, y, C, rho, **extra):
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=C, l1_ratio=rho, solver="saga", tol=1e-6, max_iter=SAGA_EPOCHS, **extra)
        begin = time.perf_counter()
        model.fit(X, y)
        return model, time.perf_counter() - begin


def _ours(X, y, C, rho):
    times = []
    for _ in range(1 + REPEATS):
        begin = time.perf_counter()
        model = jsoftmax.SoftmaxRegression(C=C, l1_ratio=rho, tol=1e-8, max_iter=100_000).fit(X, y)
        times.append(time.perf_counter() - begin)
    return model, times[0], statistics.median(times[1:])


def _row(name, X, y, C, rho, ours, theirs, first, steady, saga_s) -> dict:
    coef_ours, coef_theirs = np.asarray(ours.coef_), np.asarray(theirs.coef_)
    return {"problem": name, "C": C, "l1_ratio": rho, "jsoftmax_first_s": first, "jsoftmax_s": steady,
            "saga_s": saga_s, "ratio": steady / saga_s, "saga_n_iter": int(np.max(theirs.n_iter_)),
            "jsoftmax_n_iter": int(ours.n_iter_[0]),
            "objective": objective(ours, X, y, C, rho), "saga_objective": objective(theirs, X, y, C, rho),
            "kkt": kkt_violation(coef_ours, ours.intercept_, X, y, C, rho),
            "saga_kkt": kkt_violation(coef_theirs, theirs.intercept_, X, y, C, rho),
            "gap": gap(coef_ours, ours.intercept_, X, y, C, rho),
            "saga_gap": gap(coef_theirs, theirs.intercept_, X, y, C, rho),
            "support": int(np.sum(np.abs(coef_ours) > 1e-8)), "saga_support": int(np.sum(np.abs(coef_theirs) > 1e-8)),
            "same_support": bool(np.array_equal(np.abs(coef_ours) > 1e-8, np.abs(coef_theirs) > 1e-8))}


def run(quick: bool = False, *, deadline: float | None = None, on_result=None) -> dict:
    """Every row, cheapest first. With ``deadline`` (``time.monotonic()``) a row that would start
    after it is skipped and named; ``on_result(payload)`` after each row (the GPU kit writes
    what it has, so a cut-off run keeps its rows)."""
    import jax

    payload = {"fits": [], "path": None, "searches": [], "skipped": [], "device": jax.devices()[0].platform}

    def due(name: str) -> bool:
        if deadline is not None and time.monotonic() > deadline:
            payload["skipped"].append(name)
            return False
        return True

    def done() -> None:
        if on_result is not None:
            on_result(payload)

    for name, X, y in _dense_problems(quick):
        for rho, C in (CASES[:1] if quick else CASES):
            if due(f"{name} ρ={rho:g} C={C:g}"):
                theirs, saga_s = _saga(X, y, C, rho)
                ours, first, steady = _ours(X, y, C, rho)
                payload["fits"].append(_row(name, X, y, C, rho, ours, theirs, first, steady, saga_s))
                done()
    if due("search"):
        payload["searches"] = _searches(quick)
        done()
    if due("path"):
        payload["path"] = _path(quick)
        done()
    from ..sparse_data import make

    sparse_name = "small (sparse)" if quick else "news20-shaped (sparse)"
    if due(sparse_name):
        X, y = make("small" if quick else "news20")
        theirs, saga_s = _saga(X, y, 1.0, 1.0)
        ours, first, steady = _ours(X, y, 1.0, 1.0)
        payload["fits"].append(_row(sparse_name, X, y, 1.0, 1.0, ours, theirs, first, steady, saga_s))
        done()
    return payload


def _searches(quick: bool) -> list[dict]:
    """The (l1_ratio × C × fold) grid: SoftmaxRegressionCV against LogisticRegressionCV's saga."""
    rows = []
    grid = dict(Cs=list(np.logspace(-2, 1, 3 if quick else 5)), l1_ratios=[0.5, 1.0], cv=StratifiedKFold(5),
                scoring="neg_log_loss")
    for name, X, y in _dense_problems(quick):
        if name == "digits":  # saga's 2 × 5 × 5 digits fits take tens of minutes (up to 37 s each, above)
            continue
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            begin = time.perf_counter()
            theirs = LogisticRegressionCV(solver="saga", tol=1e-6, max_iter=SAGA_EPOCHS, use_legacy_attributes=True,
                                          **grid).fit(X, y)
            saga_s = time.perf_counter() - begin
        times = []
        for _ in range(1 + REPEATS):
            begin = time.perf_counter()
            ours = jsoftmax.SoftmaxRegressionCV(tol=1e-8, max_iter=100_000, **grid).fit(X, y)
            times.append(time.perf_counter() - begin)
        key = ours.classes_[-1]
        rows.append({"problem": name, "n_Cs": len(grid["Cs"]), "models": len(grid["Cs"]) * 2 * 5, "saga_s": saga_s, "jsoftmax_first_s": times[0],
                     "jsoftmax_s": statistics.median(times[1:]), "ratio": statistics.median(times[1:]) / saga_s,
                     "C": float(ours.C_[0]), "saga_C": float(theirs.C_[0]), "l1_ratio": float(ours.l1_ratio_[0]),
                     "saga_l1_ratio": float(theirs.l1_ratio_[0]),
                     "best_score": float(ours.scores_[key].mean(axis=0).max()),
                     "saga_best_score": float(theirs.scores_[key].mean(axis=0).max()),
                     "largest_score_difference": float(np.max(np.abs(ours.scores_[key] - theirs.scores_[key])))})
    return rows


def _path(quick: bool) -> dict:
    """20 values of C on digits, ρ = 1: one jsoftmax program against 20 warm-started saga fits."""
    X, y = (load_wine if quick else load_digits)(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    n, d = X.shape
    k = len(np.unique(y))
    with enable_x64():
        start = jsoftmax.Params(np.zeros((d, k)), np.zeros(k))
        times = []
        for _ in range(1 + REPEATS):
            begin = time.perf_counter()
            path = jsoftmax.regularization_path(start, X, y, l1_ratio=1.0, n_strengths=20, min_ratio=1e-3, tol=1e-8,
                                                max_iter=100_000)
            times.append(time.perf_counter() - begin)
    Cs = path.Cs(n)
    model = LogisticRegression(l1_ratio=1.0, solver="saga", tol=1e-6, max_iter=SAGA_EPOCHS, warm_start=True)
    saga_objectives, saga_kkts, saga_support = [], [], []
    ours_objectives, ours_kkts = [], []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        begin = time.perf_counter()
        for C in Cs:
            model.set_params(C=float(C)).fit(X, y)
            saga_objectives.append(objective(model, X, y, C, 1.0))
            saga_kkts.append(kkt_violation(model.coef_, model.intercept_, X, y, C, 1.0))
            saga_support.append(int(np.sum(np.abs(model.coef_) > 1e-8)))
        saga_s = time.perf_counter() - begin
    if not quick:
        _plot(Cs, np.asarray(path.params.W), f"penalties-path-{common.machine()['platform']}.png")
    for i, C in enumerate(Cs):
        W, b = np.asarray(path.params.W[i]), np.asarray(path.params.b[i])
        # ours in scikit-learn's layout: C·N·(scaled objective) is its objective
        ours_objectives.append(float(path.objective[i]) * C * n)
        ours_kkts.append(kkt_violation(W.T, b, X, y, C, 1.0))
    return {"problem": "wine" if quick else "digits", "n_strengths": len(Cs), "Cs": Cs.tolist(),
            "jsoftmax_first_s": times[0], "jsoftmax_s": statistics.median(times[1:]), "saga_s": saga_s,
            "ratio": statistics.median(times[1:]) / saga_s, "support": path.support.tolist(),
            "saga_support": saga_support, "objective": ours_objectives, "saga_objective": saga_objectives,
            "kkt": ours_kkts, "saga_kkt": saga_kkts, "n_iter": path.n_iter.tolist()}


def _plot(Cs: np.ndarray, W: np.ndarray, name: str) -> None:
    """glmnet's picture: every coefficient against log C along the path (one colour per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.cm.tab10(np.arange(W.shape[2]) % 10)
    for k in range(W.shape[2]):
        for j in range(W.shape[1]):
            if np.any(W[:, j, k]):
                ax.plot(Cs, W[:, j, k], color=colours[k], lw=0.8, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("C (log scale)")
    ax.set_ylabel("coefficient")
    ax.set_title(f"L1 path on standardised digits: {W.shape[1] * W.shape[2]} coefficients, one colour per class")
    fig.tight_layout()
    fig.savefig(common.RESULTS / name, dpi=110)
    plt.close(fig)


def markdown(payload: dict) -> str:
    rows = []
    for r in payload["fits"]:
        capped = " capped" if r["saga_n_iter"] >= SAGA_EPOCHS else ""
        rows.append([r["problem"], f"ρ={r['l1_ratio']:g}, C={r['C']:g}", f"{r['saga_s']:.3f} s ({r['saga_n_iter']} ep{capped})",
                     f"{r['jsoftmax_s']:.3f} s ({r['jsoftmax_first_s']:.2f} s first)", f"{r['ratio']:.3f}×",
                     f"{r['objective']:.8g}", f"{r['saga_objective']:.8g}",
                     "yes" if r["objective"] <= r["saga_objective"] * (1 + 1e-9) else "no",
                     f"{r['kkt']:.1e}", f"{r['saga_kkt']:.1e}", f"{r['gap']:.1e}", f"{r['saga_gap']:.1e}",
                     f"{r['support']} / {r['saga_support']}" + ("" if r["same_support"] else " (differ)")])
    text = (f"## L1 and elastic-net fits: jsoftmax (OWL-QN on {payload.get('device', 'cpu')}, tol 1e-8 on the KKT "
            f"violation) vs saga (tol 1e-6, 1 thread, at most {SAGA_EPOCHS:,} epochs)\n\n"
            + common.table(["problem", "penalty", "saga", "jsoftmax", "ratio", "objective", "saga objective",
                            "≤ saga", "KKT", "saga KKT", "gap", "saga gap", "support (ours / saga)"], rows))
    p = payload["path"]
    if p is not None:
        worse = sum(o > s * (1 + 1e-9) for o, s in zip(p["objective"], p["saga_objective"]))
        text += (f"\n## A path of {p['n_strengths']} values of C on {p['problem']} (L1): one program vs "
                 f"{p['n_strengths']} warm-started saga fits\n\n"
                 + common.table(["jsoftmax path", "saga, 20 warm-started fits", "ratio", "largest KKT (ours)",
                                 "largest KKT (saga)", "points where ours is above saga's objective"],
                                [[f"{p['jsoftmax_s']:.2f} s ({p['jsoftmax_first_s']:.2f} s first)",
                                  f"{p['saga_s']:.2f} s", f"{p['ratio']:.3f}×", f"{max(p['kkt']):.1e}",
                                  f"{max(p['saga_kkt']):.1e}", worse]])
                 + f"\nSupport along the path (ours): {p['support']}; saga's: {p['saga_support']}.\n")
    searches = payload.get("searches", [])
    if searches:
        text += ("\n## The (l1_ratio × C × fold) search: SoftmaxRegressionCV vs LogisticRegressionCV(solver=\"saga\")\n\n"
                 f"l1_ratios (0.5, 1), {searches[0]['n_Cs']} Cs from 0.01 to 10 (log-spaced), 5 stratified folds, "
                 "scoring neg_log_loss; saga at tol 1e-6 "
                 "(1 thread), jsoftmax at tol 1e-8 (KKT).\n\n"
                 + common.table(["problem", "models", "saga", "jsoftmax", "ratio", "C, l1_ratio (ours)",
                                 "C, l1_ratio (saga)", "best mean score (ours / saga)", "largest score difference"],
                                [[r["problem"], r["models"], f"{r['saga_s']:.2f} s",
                                  f"{r['jsoftmax_s']:.2f} s ({r['jsoftmax_first_s']:.2f} s first)", f"{r['ratio']:.3f}×",
                                  f"{r['C']:.3g}, {r['l1_ratio']:g}", f"{r['saga_C']:.3g}, {r['saga_l1_ratio']:g}",
                                  f"{r['best_score']:.6f} / {r['saga_best_score']:.6f}",
                                  f"{r['largest_score_difference']:.1e}"] for r in searches]))
    if payload.get("skipped"):
        text += f"\nSkipped (out of time): {', '.join(payload['skipped'])}.\n"
    return text
