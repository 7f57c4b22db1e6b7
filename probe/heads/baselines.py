"""Baselines anyone can check against, from scikit-learn.

- ``logreg``: LogisticRegression on standardised features (the linear probe should
  land within about a point of it).
- ``knn``: k-nearest-neighbour vote on L2-normalised features (cosine similarity).
"""
from typing import Any

import numpy as np


def make_baseline(name: str, opts: dict[str, Any], seed: int) -> Any:
    # scikit-learn takes seconds to import: only the runs that ask for a baseline pay it
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    if name == "logreg":
        return make_pipeline(StandardScaler(),
                             LogisticRegression(C=opts["C"], max_iter=2000, random_state=seed))
    return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=opts["k"]))


def baseline_params(model: Any) -> int:
    """Learned numbers: the logistic regression's weights and biases; k-NN has none (it
    stores the training set)."""
    from sklearn.linear_model import LogisticRegression

    clf = model[-1]
    if isinstance(clf, LogisticRegression):
        return int(clf.coef_.size + clf.intercept_.size)
    return 0


def baseline_scores(model: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities as an (N, num_classes) array (classes absent from training
    get 0)."""
    proba = model.predict_proba(x)
    out = np.zeros((len(x), num_classes), dtype=np.float64)
    out[:, model.classes_.astype(int)] = proba
    return out
