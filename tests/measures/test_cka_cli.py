"""`probe cka` end to end on small written files."""
import csv
import importlib
import json

import numpy as np
import pytest
from matplotlib.image import imread

import probe
from probe.cli import main
from probe.store import write_features
from tolerances import assert_close_f32


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
    # written exactly; the same process and thread count, so the same kernels
    np.testing.assert_array_equal(m, want.matrix)
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
    np.testing.assert_array_equal(m, want.matrix)  # same process, thread count and kernels
    assert "unbiased HSIC, minibatch 16 (3 batches)" in capsys.readouterr().out
    assert not (tmp_path / "x_line.png").exists()  # one timestep: no line to draw


def test_line_plot_options(tmp_path, files):
    out = tmp_path / "l.png"
    assert main(["cka", files[0], "--line-blocks", "mid", "--line-ref", "t200", "--out", str(out)]) == 0
    assert (tmp_path / "l_line.png").exists()


@pytest.mark.parametrize("extra,message", [
    (["--keys", "t20/nope"], "has no block 'nope'; it has enc (1), mid (2), dec (3)"),
    (["--across", "rows"], "invalid choice"),
    (["--minibatch", "2"], "minibatch 2 is too small"),
    (["--line-blocks", "bottleneck"], "block 'bottleneck' is not in the CKA rows"),
    (["--out", "x.txt"], "needs one of the extensions"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, files, capsys, extra, message):
    out = tmp_path / "out" / "e.png"
    argv = ["cka", files[0], "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    # options are checked before anything is written: no CSV, JSON or plot, not even a folder
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["under_a_file", "is_a_folder"])
def test_unwritable_out_is_one_line(tmp_path, files, capsys, where):
    if where == "under_a_file":
        out = f"{files[0]}/x.png"  # a folder path through an existing file
    else:
        out = tmp_path / "taken.png"
        out.mkdir()
    assert main(["cka", files[0], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.h5", "b.h5"] + (["taken.png"] if where == "is_a_folder" else []))


def test_failed_write_leaves_no_partial_outputs(tmp_path, files, monkeypatch, capsys):
    plot = importlib.import_module("probe.report.measures")

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot, "line_plot", broken)
    out = tmp_path / "p" / "cka.png"
    assert main(["cka", files[0], "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # the CSV, JSON and heatmap were not left behind


def test_rerun_without_line_plot_removes_the_old_one(tmp_path, files):
    out = tmp_path / "c.png"
    assert main(["cka", files[0], "--out", str(out)]) == 0
    assert (tmp_path / "c_line.png").exists()
    before = (tmp_path / "c.csv").read_bytes()
    assert main(["cka", files[0], "--t", "20", "--out", str(out)]) == 2  # refused: outputs exist
    assert (tmp_path / "c.csv").read_bytes() == before
    # one t: no line plot, and the old one would not match the new matrix
    assert main(["cka", files[0], "--t", "20", "--out", str(out), "--overwrite"]) == 0
    assert not (tmp_path / "c_line.png").exists()
    assert (tmp_path / "c.csv").read_bytes() != before


def test_keys_b_within_one_file_is_a_rectangular_grid(tmp_path, files):
    from probe.store import open_features
    from measures.test_cka_core import np_cka

    res = probe.cka(files[0], keys="t20", keys_b="t200")
    assert res.row_labels == ["t20/enc", "t20/mid", "t20/dec"]
    assert res.col_labels == ["t200/enc", "t200/mid", "t200/dec"]
    with open_features(files[0]) as f:
        want = [[np_cka(f.load(r).reshape(48, -1), f.load(c).reshape(48, -1)) for c in res.cols]
                for r in res.rows]
    assert_close_f32(res.matrix, want, n=12, scale=1)  # float32 Grams of 12 products; CKA <= 1
    out = tmp_path / "r.png"
    assert main(["cka", files[0], "--keys", "t20", "--keys-b", "t200", "--out", str(out)]) == 0
    assert read_csv(tmp_path / "r.csv")[0] == res.col_labels


def test_missing_file(tmp_path, capsys):
    assert main(["cka", str(tmp_path / "none.h5"), "--out", str(tmp_path / "e.png")]) == 2
    assert "feature file not found" in capsys.readouterr().err
