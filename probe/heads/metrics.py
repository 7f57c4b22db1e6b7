"""Classification metrics from scikit-learn, as JSON-ready values."""
import numpy as np


def classification_metrics(labels, scores, class_names):
    """top-1, top-5 (None with 5 classes or fewer: it would be 1 by definition), per-class
    accuracy (None for a class absent from the evaluated set), confusion matrix (rows:
    true class, columns: predicted) and the predictions."""
    # here, not at the top: `import probe.heads` should not cost scikit-learn's import
    from sklearn.metrics import accuracy_score, confusion_matrix, top_k_accuracy_score

    k = len(class_names)
    classes = np.arange(k)
    pred = scores.argmax(1)
    cm = confusion_matrix(labels, pred, labels=classes)
    support = cm.sum(1)
    return {
        "top1": float(accuracy_score(labels, pred)),
        "top5": float(top_k_accuracy_score(labels, scores, k=5, labels=classes)) if k > 5 else None,
        "per_class_accuracy": {name: (float(cm[i, i] / support[i]) if support[i] else None)
                               for i, name in enumerate(class_names)},
        "confusion_matrix": cm.tolist(),
        "predictions": pred.tolist(),
    }
