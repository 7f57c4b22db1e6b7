"""Classification metrics from scikit-learn, as JSON-ready values, and the one interval
every accuracy in a report carries."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of a proportion: ``correct`` successes
    of ``n`` trials (``correct`` may be a count or ``top1 * n``).  Unlike the normal
    interval it stays inside [0, 1] and is not empty at 0 % or 100 %.  (nan, nan) when
    ``n`` is 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = min(max(correct / n, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def tied_with_best(accuracies: Sequence[float], sizes: Sequence[int]) -> list[bool]:
    """Which accuracies the data cannot tell from the best: those whose 95 % Wilson
    interval overlaps the best one's (the best itself included).  Overlapping intervals
    are a conservative test (two rates whose intervals just touch differ at about the
    0.5 % level), so a key outside the tie is worse beyond doubt, and a claim of "the best
    key" is made only when no other key is tied with it."""
    if not len(accuracies):
        return []
    spans = [wilson_interval(a * n, n) for a, n in zip(accuracies, sizes)]
    best = int(np.argmax(accuracies))
    low_best = spans[best][0]
    return [hi >= low_best for _, hi in spans]


def classification_metrics(labels: np.ndarray, scores: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """top-1 with its 95 % Wilson interval, top-5 (None with 5 classes or fewer: it would
    be 1 by definition), per-class accuracy (None for a class absent from the evaluated
    set), confusion matrix (rows: true class, columns: predicted) and the predictions."""
    # here, not at the top: `import probe.heads` should not cost scikit-learn's import
    from sklearn.metrics import accuracy_score, confusion_matrix, top_k_accuracy_score

    k = len(class_names)
    classes = np.arange(k)
    pred = scores.argmax(1)
    cm = confusion_matrix(labels, pred, labels=classes)
    support = cm.sum(1)
    correct = int(np.trace(cm))
    return {
        "top1": float(accuracy_score(labels, pred)),
        "top1_interval": list(wilson_interval(correct, len(labels))),
        "top5": float(top_k_accuracy_score(labels, scores, k=5, labels=classes)) if k > 5 else None,
        "per_class_accuracy": {name: (float(cm[i, i] / support[i]) if support[i] else None)
                               for i, name in enumerate(class_names)},
        "confusion_matrix": cm.tolist(),
        "predictions": pred.tolist(),
    }
