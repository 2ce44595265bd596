"""``jsoftmax demo``: the main job.

Trains on scikit-learn's digits with the analytic gradient (full-batch L-BFGS), checks that
gradient against ``jax.grad`` at the fitted point, compares accuracy and objective with
scikit-learn's ``LogisticRegression`` at the same C, saves the model and a plot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def run_demo(out_dir: str = "jsoftmax-out", *, as_json: bool = False, quiet: bool = False) -> int:
    import jax.numpy as jnp
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from ..io import data as loaders
    from .._compat import enable_x64
    from ..sklearn import SoftmaxRegression
    from .plot import training_plot
    from .metrics import classification_metrics
    from .._types import Params
    from .._verify import check_gradient

    say = (lambda *a: None) if (as_json or quiet) else print
    C, tol = 1.0, 1e-6
    X, y = loaders.load_dataset("digits")
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    say(f"Digits: {len(X_train)} training and {len(X_test)} test images, 64 features, 10 classes.")

    started = time.perf_counter()
    model = SoftmaxRegression(C=C, tol=tol, max_iter=1000, standardize=True).fit(X_train, y_train)
    fit_seconds = time.perf_counter() - started
    opt = model.optimality_
    say(f"jsoftmax: L-BFGS with the analytic gradient, {opt['n_iter']} iterations in "
        f"{fit_seconds:.2f} s (compilation included); gradient max-abs {opt['grad_norm']:.1e}, "
        f"converged={opt['converged']}.")

    # The analytic gradient at the fitted point against jax.grad, step by step, in float64.
    scaled = (X_train - model.mean_) / model.scale_  # the model's own standardisation
    with enable_x64():
        report = check_gradient(
            Params(jnp.asarray(model.coef_.T), jnp.asarray(model.intercept_)), jnp.asarray(scaled),
            jnp.asarray(np.searchsorted(model.classes_, y_train), jnp.int32), l2=1.0 / (C * len(y_train)),
        )
    say("\nGradient check at the fitted parameters (float64):")
    say(str(report))

    sk = LogisticRegression(C=C, tol=tol, max_iter=1000).fit(StandardScaler().fit(X_train).transform(X_train), y_train)
    sk_X_test = (X_test - model.mean_) / model.scale_
    ours_obj = model.objective(X_train, y_train)
    lp = sk.predict_log_proba(scaled)
    sk_obj = float(C * np.sum(-lp[np.arange(len(y_train)), y_train]) + 0.5 * np.sum(sk.coef_**2))
    ours_test = classification_metrics(model, X_test, y_test)
    sk_acc = float(sk.score(sk_X_test, y_test))
    say("\n                 test accuracy   objective C*sum(loss) + |W|^2/2")
    say(f"jsoftmax         {ours_test['accuracy']:.4f}          {ours_obj:.6f}")
    say(f"scikit-learn     {sk_acc:.4f}          {sk_obj:.6f}")

    out = Path(out_dir)
    model_path, plot_path = out / "digits-model.npz", out / "digits.png"
    model.save(model_path)
    reloaded = SoftmaxRegression.load(model_path)
    same = bool(np.array_equal(reloaded.predict(X_test), model.predict(X_test)))
    training_plot(plot_path, model.loss_curve_, ours_test["confusion_matrix"], model.classes_,
                  title="jsoftmax on scikit-learn digits (test set)")
    say(f"\nSaved the model to {model_path} (reloaded: same predictions = {same}) "
        f"and the plot to {plot_path}.")
    passed = report.passed and same and opt["converged"]
    say("DEMO PASSED" if passed else "DEMO FAILED")
    if as_json:
        print(json.dumps({
            "passed": passed, "fit_seconds": fit_seconds, "optimality": opt,
            "gradient_check": report.to_dict(),
            "jsoftmax": {"test_accuracy": ours_test["accuracy"], "objective": ours_obj},
            "scikit_learn": {"test_accuracy": sk_acc, "objective": sk_obj},
            "model": str(model_path), "plot": str(plot_path),
        }, indent=2))
    return 0 if passed else 1
