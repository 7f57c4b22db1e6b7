"""`probe fit` and `probe compare` end to end, checked against scikit-learn."""
import csv
import json

import numpy as np
from matplotlib.image import imread
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize

from heads.heads_data import blob_files
from probe.cli import main
from probe.store import open_features

FAST = ["--epochs", "6", "--batch-size", "64", "--no-progress"]


def test_fit_saves_metrics_sklearn_agrees_with(tmp_path, capsys):
    tr, te = blob_files(tmp_path, keys=((100, "output_blocks.4"), (100, "middle_block")))
    out = tmp_path / "res.json"
    assert main(["fit", tr, "--head", "attention", "--t", "100", "--block", "output_blocks.4",
                 "--test", te, "--out", str(out), "--dim", "16"] + FAST) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    with open_features(te) as f:
        y = f.labels
    pred = np.array(r["predictions"])
    assert len(pred) == len(y) == r["num_eval"]
    assert r["top1"] == accuracy_score(y, pred)
    assert r["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert list(r["per_class_accuracy"].values()) == recall_score(y, pred, average=None).tolist()
    assert r["top5"] is None  # 4 classes: top-5 is meaningless
    assert (r["head"], r["t"], r["block"], r["evaluated_on"]) == ("attention", 100, "output_blocks.4", "test")
    assert r["params"] > 0 and r["train_time_s"] > 0 and r["seed"] == 0
    assert r["settings"]["optimizer"] == "adamw" and r["settings"]["epochs"] == 6
    assert f"top-1 {r['top1']:.4f}" in printed and "confusion matrix" in printed


def test_fit_without_test_evaluates_on_the_validation_split(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tr, _ = blob_files(tmp_path)
    assert main(["fit", tr, "--head", "knn", "--k", "5", "--json", "--seed", "7"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (tmp_path / "fit-knn-t100-mid.json").exists()  # the default --out
    assert r["evaluated_on"] == "validation" and any("validation split" in n for n in r["notes"])
    # the same split and the same k-NN, computed with scikit-learn alone
    with open_features(tr) as f:
        x, y = f.load((100, "mid")).mean(axis=(2, 3)), f.labels
    rest, val = train_test_split(np.arange(len(y)), test_size=0.1, random_state=7, stratify=y)
    knn = KNeighborsClassifier(5).fit(normalize(x[rest]), y[rest])
    assert r["predictions"] == knn.predict(normalize(x[np.sort(val)])).tolist()


def test_compare_writes_table_csv_and_plots(tmp_path, capsys):
    keys = ((10, "input_blocks.2"), (10, "output_blocks.4"), (500, "input_blocks.2"),
            (500, "output_blocks.4"))
    tr, te = blob_files(tmp_path, keys=keys)
    out = tmp_path / "cmp"
    heads = ["linear", "mlp", "cnn", "attention", "logreg", "knn"]
    assert main(["compare", tr, te, "--heads", ",".join(heads), "--out", str(out),
                 "--dim", "16", "--width", "16"] + FAST) == 0
    printed = capsys.readouterr().out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(keys) * len(heads)
    assert {(int(r["t"]), r["block"], r["head"]) for r in rows} == \
        {(t, b, h) for t, b in keys for h in heads}
    saved = json.loads((out / "results.json").read_text())
    with open_features(te) as f:
        y = f.labels
    for s in saved:  # each saved confusion matrix gives the saved top-1
        cm = np.array(s["confusion_matrix"])
        assert cm.sum() == len(y) and np.trace(cm) / cm.sum() == s["top1"]
    md = (out / "results.md").read_text()
    assert md.strip() in printed
    assert "| block | t | " + " | ".join(heads) + " |" in md
    assert md.count("| input_blocks.2 |") == 2
    for png in ("accuracy_vs_t.png", "heads.png"):
        img = imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300


def test_compare_selects_timesteps_and_blocks(tmp_path):
    keys = ((10, "a"), (10, "b"), (500, "a"), (500, "b"))
    tr, te = blob_files(tmp_path, keys=keys)
    out = tmp_path / "cmp"
    assert main(["compare", tr, te, "--heads", "linear", "--t", "500", "--blocks", "a,b",
                 "--out", str(out)] + FAST) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["t"], r["block"]) for r in rows] == [("500", "a"), ("500", "b")]
    assert all(r["keys_in_pass"] == "2" for r in rows)
