"""`probe cka` end to end on small written files."""
import csv
import json

import numpy as np
import pytest
from matplotlib.image import imread

import probe
from probe.cli import main
from probe.store import write_features


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    n = 48
    z = rng.standard_normal((n, 5))
    a = {}
    for t in (20, 200):
        for i, b in enumerate(["enc", "mid", "dec"]):
            f = np.tanh(z @ rng.standard_normal((5, 12))) + t / 100 * rng.standard_normal((n, 12))
            a[(t, b)] = f.reshape(n, 3, 2, 2) if b == "mid" else f
    ids = [f"img{i}" for i in range(n)]
    pa = write_features(tmp_path / "a.h5", a, labels=np.arange(n) % 3, ids=ids)
    perm = rng.permutation(n)
    b = {(0, "layer1"): z[perm] @ rng.standard_normal((5, 7)), (0, "layer2"): np.maximum(z[perm], 0)}
    pb = write_features(tmp_path / "b.h5", b, labels=np.zeros(n, int), ids=[ids[i] for i in perm])
    return str(pa), str(pb)


def read_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0][1:], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def test_writes_matrix_plots_and_matches_api(tmp_path, files):
    out = tmp_path / "plots" / "cka.png"
    assert main(["cka", files[0], "--out", str(out)]) == 0
    for name in ("cka.csv", "cka.json", "cka.png", "cka_line.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
    assert imread(out).ndim == 3 and imread(tmp_path / "plots" / "cka_line.png").ndim == 3
    cols, rows, m = read_csv(tmp_path / "plots" / "cka.csv")
    want = probe.cka(files[0])
    assert rows == cols == want.row_labels
    assert rows[:3] == ["t20/enc", "t20/mid", "t20/dec"]
    np.testing.assert_array_equal(m, want.matrix)  # written exactly
    js = json.loads((tmp_path / "plots" / "cka.json").read_text())
    assert js["rows"] == rows and np.array_equal(np.array(js["matrix"]), want.matrix)
    assert js["estimator"]["unbiased"] is False and js["num_samples"] == 48


def test_two_files_minibatch_rbf(tmp_path, files, capsys):
    out = tmp_path / "x.png"
    argv = ["cka", *files, "--keys", "t200", "--keys-b", "layer1,layer2", "--minibatch", "16",
            "--kernel", "rbf", "--sigma", "0.5", "--across", "all", "--out", str(out)]
    assert main(argv) == 0
    cols, rows, m = read_csv(tmp_path / "x.csv")
    want = probe.cka(files[0], files[1], keys="t200", keys_b=["layer1", "layer2"], minibatch=16,
                     kernel="rbf", sigma=0.5, across="all")
    assert cols == ["t0/layer1", "t0/layer2"] and rows == ["t200/enc", "t200/mid", "t200/dec"]
    np.testing.assert_array_equal(m, want.matrix)
    assert "unbiased HSIC, minibatch 16 (3 batches)" in capsys.readouterr().out
    assert not (tmp_path / "x_line.png").exists()  # one timestep: no line to draw


def test_line_plot_options(tmp_path, files):
    out = tmp_path / "l.png"
    assert main(["cka", files[0], "--line-blocks", "mid", "--line-ref", "t200", "--out", str(out)]) == 0
    assert (tmp_path / "l_line.png").exists()


@pytest.mark.parametrize("extra,message", [
    (["--keys", "t20/nope"], "no features for t=20, block nope"),
    (["--across", "rows"], "invalid choice"),
    (["--minibatch", "2"], "minibatch 2 is too small"),
    (["--line-blocks", "bottleneck"], "block 'bottleneck' is not in the CKA rows"),
    (["--out", "x.txt"], "needs one of the extensions"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, files, capsys, extra, message):
    argv = ["cka", files[0], "--out", str(tmp_path / "e.png"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_file(tmp_path, capsys):
    assert main(["cka", str(tmp_path / "none.h5"), "--out", str(tmp_path / "e.png")]) == 2
    assert "feature file not found" in capsys.readouterr().err
