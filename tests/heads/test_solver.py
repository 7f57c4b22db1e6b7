"""The linear head's full-batch L-BFGS solver, checked against scikit-learn and against
itself solved other ways (alone vs in a grid, in memory vs streamed)."""
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

import probe
from heads.heads_data import gaussian_classes, write
from probe.cli import main
from probe.errors import ProbeError
from probe.heads.data import FeatureSource
from probe.heads.solver import L2_PATH, Rows, fit_linear, loss_grad, moments
from probe.heads.train import TrainConfig
from probe.store import open_features
from tolerances import (LBFGS_F32_PROBA, LBFGS_F32_TOP1, LBFGS_LOSS, LBFGS_PROBA, LBFGS_WEIGHTS,
                        approx, approx_f32, approx_f64, assert_close, assert_close_f32,
                        assert_close_f64)

KEY = (0, "b")
VIEW = (KEY, "vec")


def _mixed(n, dim, classes=5, seed=0, sep=0.8, offset=50.0, y=None):
    """Overlapping Gaussian classes seen through a random linear mix plus a large offset:
    correlated features whose means dwarf their spread.  ``y``: labels to share."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes) if y is None else y
    means = rng.normal(size=(classes, dim)) * sep * 3 / np.sqrt(dim)
    mix = rng.normal(size=(dim, dim))
    return ((means[y] + rng.normal(size=(n, dim))) @ mix + offset).astype(np.float32), y


def _rows(y, seed=0, fraction=0.1):
    """The documented split (sklearn's train_test_split), independently of probe."""
    tr, va = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed,
                              stratify=y)
    return np.sort(tr), np.sort(va)


def _standardise(x, rows):
    """BatchNorm's eval with the training rows' statistics (population variance, eps
    1e-6), in float64 numpy."""
    x = x.astype(np.float64)
    mean, var = x[rows].mean(0), x[rows].var(0)
    return (x - mean) / np.sqrt(var + 1e-6)


def _solve(path, views, dims, y, num_classes=5, stream=False, limit=1e12, **cfg):
    """fit_linear on a file, in float64 so that it can be held to tight tolerances."""
    tr, va = _rows(y)
    with open_features(path) as ff:
        src = FeatureSource(ff, views, limit, stream=stream)
        cfg = TrainConfig(device="cpu", **cfg).resolved().for_head("linear", len(tr))
        out, _ = fit_linear(src, views, dims, tr, va, num_classes, cfg, progress=False,
                            dtype=torch.float64)
    return out


def _weights(head):
    return np.concatenate([head.fc.weight.detach().double().numpy(),
                           head.fc.bias.detach().double().numpy()[:, None]], 1)


@pytest.mark.parametrize("classes", [5, 2])
@pytest.mark.numerics
def test_matches_scikit_learn_logistic_regression(tmp_path, classes):
    x, y = _mixed(700, 12, classes=classes)
    path = write(tmp_path / "tr.h5", {KEY: x}, y, pool="mean")
    tr, va = _rows(y)
    l2 = 1e-3
    head = _solve(path, [VIEW], [12], y, num_classes=classes, l2=l2, tol=1e-9,
                  max_iter=10000)[0]["head"]
    # sklearn minimises C sum_i CE_i + |W|^2 / 2 (intercept not penalised with lbfgs); ours
    # is mean_i CE_i + l2 |W|^2 / 2, which is that divided by n C when l2 = 1 / (n C).
    # With two classes sklearn fits the one vector w = w1 - w0, and at our optimum
    # w1 = -w0 = w / 2, so |W|^2 = |w|^2 / 2: there l2 = 2 / (n C)
    n = len(tr)
    C = 1 / (n * l2) if classes > 2 else 2 / (n * l2)
    z = _standardise(x, tr)
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(z[tr], y[tr])
    ours = _weights(head)
    if classes > 2:
        ref = np.concatenate([sk.coef_, (sk.intercept_ - sk.intercept_.mean())[:, None]], 1)
    else:
        w = np.append(sk.coef_[0], sk.intercept_[0]) / 2
        ref = np.stack([-w, w])
    assert_close(ours, ref, LBFGS_WEIGHTS)
    proba = torch.softmax(head(torch.from_numpy(x[va])).double(), 1).detach().numpy()
    assert_close(proba, sk.predict_proba(z[va]), LBFGS_PROBA, scale=1)
    # the exported BatchNorm holds the training statistics: float64, stored as float32
    want = x[tr].astype(np.float64).mean(0), x[tr].astype(np.float64).var(0)
    assert_close_f32(head.norm.running_mean, want[0], scale=np.abs(want[0]))
    assert_close_f32(head.norm.running_var, want[1], scale=np.abs(want[1]))


@pytest.mark.numerics
def test_probe_fit_float32_agrees_with_scikit_learn(tmp_path):
    """The default path (float32, default tolerance) end to end, at a given l2."""
    x, y = _mixed(1500, 16, seed=1)
    tr_path = write(tmp_path / "tr.h5", {KEY: x[:1000]}, y[:1000], pool="mean")
    te_path = write(tmp_path / "te.h5", {KEY: x[1000:]}, y[1000:], pool="mean", split="test")
    r = probe.fit(tr_path, test=te_path, l2=1e-3, progress=False)
    tr, _ = _rows(y[:1000])
    mean, var = x[tr].astype(np.float64).mean(0), x[tr].astype(np.float64).var(0)
    z = (x.astype(np.float64) - mean) / np.sqrt(var + 1e-6)
    sk = LogisticRegression(C=1 / (len(tr) * 1e-3), tol=1e-10, max_iter=10000).fit(z[tr], y[tr])
    assert_close(r.scores, sk.predict_proba(z[1000:]), LBFGS_F32_PROBA, scale=1)
    assert r["top1"] == approx(sk.score(z[1000:], y[1000:]), LBFGS_F32_TOP1, scale=1)
    assert r["head_options"] == {"solver": "lbfgs", "l2": 1e-3}
    assert r["solver"]["chosen_on"] == "given" and r["solver"]["converged"]
    assert r["settings"]["solver"] == "lbfgs" and r["settings"]["epochs"] is None
    assert r["epochs_run"] is None and r["selected_epoch"] is None


@pytest.mark.numerics
def test_grid_of_keys_solved_together_equals_each_alone(tmp_path):
    """Keys of two widths that need different numbers of iterations: each key keeps its
    own history, step and stopping test, so each ends where it would alone."""
    x1, y = _mixed(600, 8, seed=2)
    x2, _ = _mixed(600, 8, seed=3, sep=2.0, y=y)  # the labels of a file are every key's
    x3, _ = _mixed(600, 12, seed=4, y=y)
    x3[:, 1] = x3[:, 0] + 1e-3 * x3[:, 1]  # nearly collinear columns
    keys = {(0, "a"): x1, (0, "b"): x2, (0, "c"): x3}
    path = write(tmp_path / "grid.h5", keys, y, pool="mean")
    views = [(k, "vec") for k in keys]
    dims = [8, 8, 12]
    opts = dict(l2=(1e-2, 1e-3, 1e-4), tol=1e-8, max_iter=5000)
    together = _solve(path, views, dims, y, **opts)
    for i, view in enumerate(views):
        alone = _solve(path, [view], [dims[i]], y, **opts)[0]
        assert together[i]["l2"] == alone["l2"]
        ref = _weights(alone["head"])
        assert_close(_weights(together[i]["head"]), ref, LBFGS_WEIGHTS)
        for a, b in zip(together[i]["solver"]["path"], alone["solver"]["path"]):
            assert abs(a["iterations"] - b["iterations"]) <= 2
    # in the same call, some keys stopped long before others
    its = [r["solver"]["path"][-1]["iterations"] for r in together]
    assert max(its) - min(its) >= 10, its


@pytest.mark.numerics
def test_streamed_chunks_give_the_in_memory_gradient_and_solution(tmp_path):
    x, y = _mixed(900, 10, seed=5)
    path = write(tmp_path / "tr.h5", {KEY: x}, y, pool="mean")
    tr, _ = _rows(y)
    limit = 250 * 10 * 4  # about 250 rows of 10 floats: several chunks
    with open_features(path) as ff:
        mem = FeatureSource(ff, [VIEW], 1e12, stream=False)
        streamed = FeatureSource(ff, [VIEW], limit, stream=True)
        assert streamed.window_rows <= 250
        got = []
        for src in (mem, streamed):
            mean, var, corr = moments(src, [VIEW], tr, "cpu")[0]
            stats = [(mean, 1 / torch.sqrt(var + 1e-6))]
            rows = Rows(src, [VIEW], tr, stats, "cpu", torch.float64)
            P = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 5, 11)))
            l2 = torch.tensor([1e-3], dtype=torch.float64)
            got.append((mean, var, corr) + loss_grad(rows, P, np.arange(1), l2, len(tr)))
    (mean, var, corr, f, G), (mean2, var2, corr2, f2, G2) = got
    for a, b in ((mean, mean2), (var, var2), (f, f2), (G, G2)):  # float64 sums over chunks
        assert_close_f64(a, b, n=len(tr))
    assert_close_f32(corr, corr2, n=len(tr), scale=1)  # float32 products; correlations <= 1
    assert_close_f64(got[0][0], x[tr].astype(np.float64).mean(0), n=len(tr))
    # end to end: the same choice of l2 and the same weights
    opts = dict(l2=(1e-2, 1e-3), tol=1e-8)
    a = _solve(path, [VIEW], [10], y, **opts)[0]
    b = _solve(path, [VIEW], [10], y, stream=True, limit=limit, **opts)[0]
    assert a["l2"] == b["l2"]
    assert_close(_weights(a["head"]), _weights(b["head"]), LBFGS_WEIGHTS)


def test_l2_chosen_on_validation_is_a_path_value_and_reproducible(tmp_path):
    x, y = _mixed(800, 10, seed=6, sep=0.6)
    tr_path = write(tmp_path / "tr.h5", {KEY: x[:600]}, y[:600], pool="mean")
    te_path = write(tmp_path / "te.h5", {KEY: x[600:]}, y[600:], pool="mean", split="test")
    r = probe.fit(tr_path, test=te_path, progress=False, tol=1e-6)  # path values to 1e-5
    again = probe.fit(tr_path, test=te_path, progress=False, tol=1e-6)
    l2 = r["head_options"]["l2"]
    assert l2 in L2_PATH and again["head_options"]["l2"] == l2
    assert np.array_equal(r.scores, again.scores)  # a rerun: same machine, same kernels
    path = r["solver"]["path"]
    assert [p["l2"] for p in path] == list(L2_PATH[:len(path)])
    assert min(path, key=lambda p: p["val_loss"])["l2"] == l2 == r["solver"]["l2"]
    # the recorded validation loss is the exported head's, computed by scikit-learn
    tr, va = _rows(y[:600])
    proba = torch.softmax(r.model(torch.from_numpy(x[va])), 1).detach().numpy()
    assert r["val_loss"] == approx_f32(log_loss(y[va], proba, labels=range(5)), n=len(va))
    assert r["val_top1"] == approx_f32(accuracy_score(y[va], proba.argmax(1)))  # k / n
    # each path value's loss is scikit-learn's at C = 1 / (n l2), and so is the choice
    z = _standardise(x[:600], tr)
    ref = []
    for p in path:
        sk = LogisticRegression(C=1 / (len(tr) * p["l2"]), tol=1e-8, max_iter=10000)
        with threadpool_limits(1):  # small products: BLAS threads only wait on each other
            ref.append(log_loss(y[va], sk.fit(z[tr], y[tr]).predict_proba(z[va])))
        assert p["val_loss"] == approx(ref[-1], LBFGS_LOSS, scale=1)
    assert path[int(np.argmin(ref))]["l2"] == l2


def test_exported_head_predicts_what_the_solver_solved(tmp_path):
    """FitResult.scores come from the exported LinearHead through the common predict
    path; they match the solver's own objective: the loss it reports at the optimum."""
    x, y = _mixed(600, 8, seed=7)
    path = write(tmp_path / "tr.h5", {KEY: x}, y, pool="mean")
    r = probe.fit(path, l2=1e-2, progress=False)  # evaluated on the validation split
    _, va = _rows(y)
    assert isinstance(r.model, probe.heads.linear.LinearHead)
    assert r["evaluated_on"] == "validation"
    assert r["val_loss"] == approx_f32(log_loss(y[va], r.scores, labels=range(5)), n=len(va))
    assert r["predictions"] == r.scores.argmax(1).tolist()


def test_sgd_stays_available(tmp_path):
    x, y = gaussian_classes(400, classes=3, dim=6, sep=3.0)
    path = write(tmp_path / "tr.h5", {KEY: x}, y, pool="mean")
    r = probe.fit(path, solver="sgd", epochs=3, batch_size=64, progress=False)
    assert r["settings"]["solver"] == "sgd" and r["settings"]["optimizer"] == "sgd"
    assert r["epochs_run"] == 3 and "solver" not in r.summary


def test_solver_flags_on_the_command_line(tmp_path, capsys):
    x, y = _mixed(300, 6, classes=3, seed=8)
    path = write(tmp_path / "tr.h5", {KEY: x}, y, pool="mean")
    out = tmp_path / "r.json"
    assert main(["fit", path, "--l2", "1e-3,1e-2", "--tol", "1e-5", "--max-iter", "50",
                 "--out", str(out), "--json", "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["solver"]["l2"] in (1e-3, 1e-2)
    assert [p["l2"] for p in r["solver"]["path"]] == [1e-2, 1e-3]  # strongest first
    assert r["settings"]["l2"] == [1e-3, 1e-2] and r["settings"]["max_iter"] == 50
    assert r["solver"]["tol"] == 1e-5 and r["solver"]["path_tol"] == approx_f64(1e-4)
    assert main(["fit", path, "--solver", "sgd", "--epochs", "2", "--out", str(out),
                 "--overwrite", "--json", "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["settings"]["solver"] == "sgd" and r["epochs_run"] == 2


@pytest.mark.parametrize("opts, words", [
    (dict(l2=(1e-3, 1e-4), val_fraction=0), "--l2"),
    (dict(l2=-1.0), "--l2"),
    (dict(solver="newton"), "lbfgs or sgd"),
    (dict(tol=0), "--tol"),
    (dict(max_iter=0), "--max-iter"),
])
def test_bad_solver_options(tmp_path, opts, words):
    x, y = gaussian_classes(200, classes=3, dim=4)
    path = write(tmp_path / "tr.h5", {KEY: x}, y, pool="mean")
    te = write(tmp_path / "te.h5", {KEY: x}, y, pool="mean", split="test")
    with pytest.raises(ProbeError, match=words):
        probe.fit(path, test=te, progress=False, **opts)
