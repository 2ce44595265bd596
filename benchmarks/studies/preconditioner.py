"""Newton-CG with and without its diagonal preconditioner: ``python -m benchmarks.studies.preconditioner``.

For each problem (the sparse suite's rcv1- and news20-shaped CSR, the fit suite's dense
standardised digits and synthetic problems) and each variant — no preconditioner, and
M = (1 − α)·λ + α·diag(H) for α ∈ {0.01 (liblinear's), 0.1, 1} — a fresh process fits
``SoftmaxRegression(solver="newton-cg", C=1, tol=1e-6, float64)`` twice and reports the second
fit's time, the outer iterations and the objective C Σ ℓ + ½‖W‖². The rule jsoftmax keeps
(``jsoftmax/_rules.json``, ``newton_preconditioner``) is read from this table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import common

ROOT = Path(__file__).resolve().parent.parent.parent
VARIANTS = {"none": None, "α=0.01": 0.01, "α=0.1": 0.1, "α=1": 1.0}

CHILD = """
import json, time, numpy as np, scipy.sparse as sp
import jsoftmax, jsoftmax.train.newton_cg as train
mix = {mix!r}
train.PRECONDITION = {{"sparse": mix is not None, "dense": mix is not None, "mix": mix or 0.0}}
X = sp.load_npz({x!r}) if {sparse} else np.load({x!r}); y = np.load({y!r})
times = []
for _ in range(2):
    model = jsoftmax.SoftmaxRegression(C=1.0, tol=1e-6, max_iter=1000, solver="newton-cg", dtype="float64")
    t = time.perf_counter(); model.fit(X, y); times.append(time.perf_counter() - t)
log_p = model.predict_log_proba(X)
objective = float(-log_p[np.arange(len(y)), np.searchsorted(model.classes_, y)].sum() + 0.5 * np.sum(model.coef_ ** 2))
print(json.dumps({{"fit_s": times, "n_iter": int(np.max(model.n_iter_)), "objective": objective,
                   "converged": bool(model.optimality_["converged"])}}))
"""


def problems(quick: bool):
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    from ..sparse_data import make
    from ..suites.fit import synthetic

    for name in ("small",) if quick else ("news20", "rcv1"):
        yield f"{name}-shaped CSR", True, *make(name)
    X, y = load_digits(return_X_y=True)
    yield "digits, standardised", False, StandardScaler().fit_transform(X), y
    for n, d, k in ((10_000, 128, 20),) if quick else ((50_000, 128, 20), (100_000, 256, 50)):
        yield f"synthetic {n}×{d}, K={k}", False, *synthetic(n, d, k)
    del np


def run(quick: bool = False) -> dict:
    import numpy as np
    import scipy.sparse as sp

    results = []
    for name, sparse, X, y in problems(quick):
        with tempfile.TemporaryDirectory() as folder:
            x_path = os.path.join(folder, "X.npz" if sparse else "X.npy")
            y_path = os.path.join(folder, "y.npy")
            sp.save_npz(x_path, X, compressed=False) if sparse else np.save(x_path, X)
            np.save(y_path, y)
            for variant, mix in VARIANTS.items():
                code = CHILD.format(mix=mix, x=x_path, y=y_path, sparse=sparse)
                env = dict(os.environ, JSOFTMAX_CACHE_DIR="off", PYTHONPATH=str(ROOT))
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      env=env, cwd=ROOT, timeout=1800)
                if done.returncode:
                    raise RuntimeError(done.stderr[-3000:])
                row = {"problem": name, "sparse": sparse, "variant": variant,
                       **json.loads(done.stdout.strip().splitlines()[-1])}
                print(json.dumps(row), flush=True)
                results.append(row)
    return {"suite": "preconditioner", "results": results}


def markdown(payload: dict) -> str:
    rows, baseline = [], {}
    for r in payload["results"]:
        if r["variant"] == "none":
            baseline[r["problem"]] = r
        base = baseline.get(r["problem"])
        rows.append([r["problem"], r["variant"], f"{r['fit_s'][1]:.3f} s",
                     f"{r['fit_s'][1] / base['fit_s'][1]:.2f}×" if base else "", r["n_iter"],
                     f"{r['objective']:.6f}", "yes" if r["converged"] else "no"])
    return ("## Newton-CG's diagonal preconditioner (C = 1, tol 1e-6, float64, 2nd fit)\n\n"
            + common.table(["problem", "preconditioner", "time", "vs none", "outer iterations",
                            "objective", "converged"], rows))


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    payload = {"command": "python -m benchmarks.studies.preconditioner" + (" --quick" if quick else ""),
               "machine": common.machine(), **run(quick)}
    out = ROOT / "benchmarks" / "results" / ("preconditioner-quick.md" if quick else "preconditioner-cpu.md")
    text = common.stamp_markdown(payload["machine"], payload["command"]) + "\n" + markdown(payload)
    if not quick:
        out.write_text("# Benchmark `preconditioner`\n\n" + text)
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
