"""Every head learns a problem it can solve; the linear head agrees with logistic regression."""
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import probe
from heads.heads_data import FAST, blob_files, gaussian_classes, write


@pytest.mark.parametrize("head", ["linear", "mlp", "logreg", "knn"])
def test_vector_heads_learn_separated_classes(tmp_path, head):
    x, y = gaussian_classes(600, classes=5, dim=16, sep=4.0)
    tr = write(tmp_path / "tr.h5", {(10, "b"): x[:400]}, y[:400], pool="mean")
    te = write(tmp_path / "te.h5", {(10, "b"): x[400:]}, y[400:], pool="mean", split="test")
    r = probe.fit(tr, test=te, head=head, **FAST)
    assert r["top1"] >= 0.97
    # the reported metric is the accuracy of the reported predictions
    assert r["top1"] == accuracy_score(y[400:], r["predictions"])


@pytest.mark.parametrize("head", ["cnn", "attention"])
def test_spatial_heads_learn_where_pooling_loses_the_signal(tmp_path, head):
    tr, te = blob_files(tmp_path)
    opts = dict(FAST, epochs=20, batch_size=32, width=32, dim=32)
    r = probe.fit(tr, test=te, head=head, **opts)
    assert r["top1"] >= 0.97
    assert r["input"].startswith("map (8, 4, 4)")
    # the same data average-pooled is harder: the map carried information the vector lost
    pooled = probe.fit(tr, test=te, head="logreg", progress=False)
    assert r["top1"] > pooled["top1"] + 0.03


def test_linear_head_on_a_map_is_average_pooled(tmp_path):
    tr, te = blob_files(tmp_path)
    r = probe.fit(tr, test=te, head="linear", **FAST)
    assert r["params"] == 8 * 4 + 4
    assert any("global-average-pooled" in n for n in r["notes"])
    assert "global-average-pooled to (8,)" in r["input"]


def _digits_files(tmp_path, seed):
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=1 / 3, random_state=seed, stratify=y)
    return (write(tmp_path / f"tr{seed}.h5", {(0, "pixels"): xtr}, ytr, pool="mean"),
            write(tmp_path / f"te{seed}.h5", {(0, "pixels"): xte}, yte, pool="mean", split="test"),
            (xtr, ytr, xte, yte))


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_linear_head_within_a_point_of_logistic_regression_on_digits(tmp_path, solver):
    """Real data (scikit-learn's 8x8 digits): the linear probe (the default solver and
    the SGD recipe) against sklearn's LogisticRegression on standardised features, trained
    in this test on the same rows."""
    diffs = []
    for seed in range(2):
        tr, te, (xtr, ytr, xte, yte) = _digits_files(tmp_path, seed)
        r = probe.fit(tr, test=te, head="linear", progress=False, seed=seed, solver=solver)
        keep = np.ones(len(ytr), bool)  # the rows the head trained on: train minus validation
        keep[_val_rows(ytr, 0.1, seed)] = False
        scaler = StandardScaler().fit(xtr[keep])
        lr = LogisticRegression(max_iter=5000).fit(scaler.transform(xtr[keep]), ytr[keep])
        ref = accuracy_score(yte, lr.predict(scaler.transform(xte)))
        diffs.append(r["top1"] - ref)
    assert max(abs(d) for d in diffs) <= 0.02, diffs
    assert abs(np.mean(diffs)) <= 0.01, diffs


def test_linear_head_matches_logistic_regression_on_overlapping_classes(tmp_path):
    x, y = gaussian_classes(6000, classes=5, dim=32, sep=0.6)
    tr = write(tmp_path / "tr.h5", {(0, "b"): x[:4000]}, y[:4000], pool="mean")
    te = write(tmp_path / "te.h5", {(0, "b"): x[4000:]}, y[4000:], pool="mean", split="test")
    r = probe.fit(tr, test=te, head="linear", progress=False)
    rows = np.setdiff1d(np.arange(4000), _val_rows(y[:4000], 0.1, 0))  # the head's rows
    ref = LogisticRegression(max_iter=5000).fit(x[rows], y[rows]).score(x[4000:], y[4000:])
    assert 0.5 < ref < 0.95  # a problem where the classifier matters
    assert abs(r["top1"] - ref) <= 0.01


def _val_rows(labels, fraction, seed):
    """The documented validation split, computed with sklearn directly."""
    _, val = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed,
                              stratify=labels)
    return val
