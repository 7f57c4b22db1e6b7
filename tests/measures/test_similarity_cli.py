"""`probe similarity` end to end on small written files: the outputs of `probe cka`, the
stats CSV, one-line errors that leave nothing behind, and a --help without torch."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from probe.cli import main
from probe.measures import similarity
from probe.store import write_features

N = 36


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((N, 4))
    a = {(t, b): np.tanh(lat @ rng.standard_normal((4, 10))) + t / 50 * rng.standard_normal((N, 10))
         for t in (10, 50) for b in ("enc", "dec")}
    ids = [f"img{i}" for i in range(N)]
    pa = write_features(tmp_path / "a.h5", a, labels=np.zeros(N, int), ids=ids)
    order = rng.permutation(N)
    b = {(0, "layer"): (lat @ rng.standard_normal((4, 6)))[order]}
    pb = write_features(tmp_path / "b.h5", b, labels=np.zeros(N, int), ids=[ids[i] for i in order])
    return str(pa), str(pb)


def read_rows(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_two_files_with_null_and_interval(tmp_path, files, capsys):
    out = tmp_path / "o" / "knn.png"
    argv = ["similarity", *files, "--metric", "mutual-knn", "--k", "4", "--permutations", "19",
            "--bootstrap", "10", "--ci", "0.9", "--minus-null", "--seed", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mutual-knn (k=4) over 36 samples: 4 x 1 keys" in printed
    assert "permutation null: 19 shuffles of the columns' samples" in printed and "90% percentile intervals" in printed
    for name in ("knn.csv", "knn.json", "knn.png", "knn_line.png", "knn_stats.csv"):
        assert (tmp_path / "o" / name).stat().st_size > 0
    assert imread(out).ndim == 3
    want = similarity(*files, metric="mutual-knn", k=4, permutations=19, bootstrap=10, ci=0.9, seed=2)
    js = json.loads((tmp_path / "o" / "knn.json").read_text())
    assert js["metric"] == "mutual-knn" and js["estimator"]["k"] == 4
    # written exactly; the same process and thread count, so the same kernels
    np.testing.assert_array_equal(js["matrix"], want.matrix)
    np.testing.assert_array_equal(js["p_value"], want.p_value)
    stats = read_rows(tmp_path / "o" / "knn_stats.csv")
    assert stats[0] == ["row", "col", "value", "null_mean", "p_value", "ci_low", "ci_high"]
    assert stats[1][:2] == ["t10/enc", "t0/layer"]
    assert [float(v) for v in stats[1][5:]] == [want.ci_low[0, 0], want.ci_high[0, 0]]


def test_procrustes_says_it_is_a_distance_and_a_rerun_drops_old_stats(tmp_path, files, capsys):
    out = tmp_path / "p.png"
    assert main(["similarity", files[0], "--metric", "procrustes", "--permutations", "5",
                 "--out", str(out)]) == 0
    assert "procrustes is a distance" in capsys.readouterr().out
    assert (tmp_path / "p_stats.csv").exists()
    assert main(["similarity", files[0], "--metric", "procrustes", "--out", str(out)]) == 2
    assert main(["similarity", files[0], "--metric", "procrustes", "--out", str(out),
                 "--overwrite"]) == 0
    assert not (tmp_path / "p_stats.csv").exists()  # it would not match the new matrix


def test_subsample_is_recorded(tmp_path, files, capsys):
    out = tmp_path / "r.png"
    assert main(["similarity", files[0], "--metric", "rsa", "--max-samples", "20",
                 "--subsample", "20", "--out", str(out)]) == 0
    assert "(a random subset of 36, seed 0)" in capsys.readouterr().out
    sub = json.loads((tmp_path / "r.json").read_text())["estimator"]["subsample"]
    assert sub["size"] == 20 and len(set(sub["ids"])) == 20


@pytest.mark.parametrize("extra,message", [
    (["--metric", "cosine"], "invalid choice: 'cosine'"),
    (["--metric", "rsa", "--max-samples", "20"], "rsa on 36 samples needs 36 x 36 float64"),
    (["--minus-null"], "--minus-null draws each value minus its permutation null"),
    (["--metric", "mutual-knn", "--k", "36"], "k=36 neighbours needs at least 37 samples"),
    (["--subsample", "99"], "--subsample 99 is more than the 36 samples"),
    (["--keys", "t10/nope"], "has no block 'nope'"),
    (["--out", "x.txt"], "needs one of the extensions"),
])
def test_user_errors_exit_2_with_one_line_and_nothing_written(tmp_path, files, capsys, extra, message):
    out = tmp_path / "out" / "e.png"
    assert main(["similarity", files[0], "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_choices_are_the_measures():
    from probe.cli import similarity as cli
    from probe.measures import pairs
    from probe.measures.result import METRICS

    assert cli.METRICS == METRICS
    assert (cli.RSA_CORR, cli.RDMS, cli.MAX_SAMPLES) == (pairs.RSA_CORR, pairs.RDMS, pairs.MAX_SAMPLES)


def test_help_does_not_import_torch():
    code = ("import sys\nfrom probe.cli import main\ntry:\n    main(['similarity', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "False"


def test_the_summary_names_the_pair_of_the_max(tmp_path, files, capsys):
    """The platonic-representation code reports the best layer pair: so does the summary."""
    out = tmp_path / "cknna.png"
    assert main(["similarity", *files, "--metric", "cknna", "--k", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = read_rows(tmp_path / "cknna.csv")
    cols, rows = table[0][1:], [r[0] for r in table[1:]]
    m = np.array([[float(v) for v in r[1:]] for r in table[1:]])
    i, j = np.unravel_index(np.argmax(m), m.shape)
    assert f"max {m.max():.3f} ({rows[i]} vs {cols[j]})" in printed
