"""Classification metrics of a fitted model, shared by the CLI and the demo (imports scikit-learn)."""

from __future__ import annotations


def classification_metrics(model, X, y) -> dict:
    """Accuracy, log loss, per-class precision/recall/support and the confusion matrix."""
    from sklearn import metrics

    proba = model.predict_proba(X)
    predicted = model.classes_[proba.argmax(axis=1)]
    precision, recall, _, support = metrics.precision_recall_fscore_support(
        y, predicted, labels=model.classes_, zero_division=0
    )
    return {
        "n_samples": int(len(y)),
        "accuracy": float(metrics.accuracy_score(y, predicted)),
        "log_loss": float(metrics.log_loss(y, proba, labels=model.classes_)),
        "per_class": [
            {"class": c, "precision": float(p), "recall": float(r), "support": int(s)}
            for c, p, r, s in zip(model.classes_.tolist(), precision, recall, support)
        ],
        "confusion_matrix": metrics.confusion_matrix(y, predicted, labels=model.classes_).tolist(),
    }


def metrics_lines(title: str, m: dict) -> list[str]:
    """The human-readable report of :func:`classification_metrics`."""
    lines = [f"{title}: {m['n_samples']} samples, accuracy {m['accuracy']:.4f}, log loss {m['log_loss']:.4f}"]
    lines.append("  class      precision  recall  support")
    for row in m["per_class"]:
        lines.append(f"  {str(row['class']):<10} {row['precision']:9.3f}  {row['recall']:6.3f}  {row['support']:7d}")
    lines.append("  confusion matrix (rows: true, columns: predicted):")
    lines.extend("    " + " ".join(f"{v:4d}" for v in row) for row in m["confusion_matrix"])
    return lines
