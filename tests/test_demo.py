"""`probe demo` end to end on the shipped models (small --limit to keep CI fast)."""
import csv

import numpy as np

from probe.cli import main
from probe.demo import shipped_models
from probe.store import open_features


def test_demo_report_on_shipped_models(tmp_path, capsys):
    models = shipped_models()
    assert {"ldae-fmnist", "dae-pixel-fmnist", "dit-fmnist"} <= set(models)
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--limit", "120", "--epochs", "2", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    html = (out / "index.html").read_text()
    for name in models:
        assert f"## {name}" in report and f"<h2>{name}</h2>" in html
        for png in ("linear/accuracy_vs_t.png", "heads/heads.png", "cka.png"):
            assert (out / name / png).stat().st_size > 1000, png
            assert f"{name}/{png}" in report
        # the best key reported is the best row of the linear grid written alongside
        with open(out / name / "linear" / "results.csv") as fh:
            rows = list(csv.DictReader(fh))
        best = max(rows, key=lambda r: float(r["top1"]))
        assert f"t={best['t']}, {best['block']}" in report
        with open_features(str(out / "features" / f"{name}-test.h5")) as f:
            assert len(f) == 120 and f.attrs["split"] == "test" and f.attrs["data"] == "demo"
    assert report.count("![") == 3 * len(models) + len(models) * (len(models) - 1) // 2
    assert "report:" in capsys.readouterr().out


def test_demo_with_random_init_baselines_and_reuse(tmp_path, capsys):
    out = tmp_path / "report"
    args = ["demo", "--out", str(out), "--models", "ldae-fmnist", "--baselines", "--limit", "60",
            "--epochs", "1", "--quiet"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "## ldae-fmnist\n" in report and "## ldae-fmnist-random-init\n" in report
    with open_features(str(out / "features" / "ldae-fmnist-test.h5")) as a, \
            open_features(str(out / "features" / "ldae-fmnist-random-init-test.h5")) as b:
        assert a.attrs["weights_sha256"] != b.attrs["weights_sha256"]
        assert a.ids == b.ids
        key = a.keys[0]
        assert not np.allclose(a.load(key), b.load(key))
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("reusing") == 2
    strip = lambda text: [l for l in text.splitlines() if not l.startswith("Total time")]
    assert strip((out / "report.md").read_text()) == strip(report)


def test_demo_selects_features_with_the_shared_grammar(tmp_path, capsys):
    import probe

    names = probe.load_model("ldae-fmnist").block_names
    out = tmp_path / "report"
    args = ["demo", "--out", str(out), "--models", "ldae-fmnist", "--limit", "40",
            "--epochs", "1", "--quiet", "--t", "10", "--blocks", "2"]
    assert main(args) == 0
    with open_features(str(out / "features" / "ldae-fmnist-test.h5")) as f:
        assert f.keys == [(10, names[1])]  # block id 2 of the model
    capsys.readouterr()
    # other features into the same folder: the finished file is not silently replaced
    assert main(args[:-1] + ["3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args[:-1] + ["3", "--overwrite"]) == 0
    assert "reusing" not in capsys.readouterr().out
    with open_features(str(out / "features" / "ldae-fmnist-test.h5")) as f:
        assert f.keys == [(10, names[2])]
