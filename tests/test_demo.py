"""`probe demo` end to end on the shipped models (small --limit to keep CI fast)."""
import csv
import json

import numpy as np

from probe.cli import main
from probe.demo import shipped_models, shipped_references
from probe.store import open_features
from tolerances import approx_f32


def linear_cka(x, y):
    """Linear CKA with the biased HSIC (Kornblith et al. 2019), in numpy."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_demo_report_on_shipped_models(tmp_path, capsys):
    models, refs = shipped_models(), shipped_references()
    assert {"ldae-fmnist", "dae-pixel-fmnist", "dit-fmnist"} <= set(models)
    assert refs == ["sup-fmnist"]
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--limit", "120", "--epochs", "2", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    html = (out / "index.html").read_text()
    for name in models:
        assert f"## {name}" in report and f"<h2>{name}</h2>" in html
        for png in ("accuracy_vs_t.png", "linear/accuracy_vs_t.png", "heads/heads.png", "cka.png"):
            assert (out / name / png).stat().st_size > 1000, png
        for png in ("accuracy_vs_t.png", "heads/heads.png", "cka.png"):
            assert f"{name}/{png}" in report
        # the best key reported is the best row of the linear grid written alongside
        with open(out / name / "linear" / "results.csv") as fh:
            rows = list(csv.DictReader(fh))
        best = max(rows, key=lambda r: float(r["top1"]))
        assert f"t={best['t']}, {best['block']}" in report
        with open_features(str(out / "features" / f"{name}-test.h5")) as f:
            assert len(f) == 120 and f.attrs["split"] == "test" and f.attrs["data"] == "demo"
    # 3 figures per model, one per pair; the reference's CKA, one per model against it and
    # all of them in one; accuracy against log-SNR
    assert report.count("![") == 4 * len(models) + len(models) * (len(models) - 1) // 2 + 3
    assert (out / "accuracy_vs_logsnr.png").stat().st_size > 1000
    assert (out / "cka-vs-reference.png").stat().st_size > 1000
    assert "report:" in capsys.readouterr().out
    check_reference_parts(out, report, models)


def check_reference_parts(out, report, models):
    """sup-fmnist: its linear probe is the level in every accuracy figure, and the CKA
    between each diffusion key and its blocks equals the formula computed here."""
    assert "## sup-fmnist (reference network, no timestep)" in report
    with open(out / "sup-fmnist" / "linear" / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    best = max(rows, key=lambda r: float(r["top1"]))
    assert {r["t"] for r in rows} == {""} and float(best["top1"]) > 0.4  # chance: 0.1
    level = f"{100 * float(best['top1']):.1f}"
    assert report.count(f"The dashed level is sup-fmnist's best linear probe ({best['block']}, "
                        f"{level} % [") == len(models)
    versus = json.loads((out / "cka-vs-reference.json").read_text())
    assert [v["model"] for v in versus] == models
    with open_features(str(out / "features" / "sup-fmnist-test.h5")) as ref:
        # sup-fmnist's 6 blocks (4 transformer blocks, features, head) spread to 5
        assert len(ref.keys) == 5 and all(t is None for t, _ in ref.keys)
        assert ref.keys[-1] == (None, "head")
        ref_last = ref.load(ref.keys[-1])
        for v in versus:
            assert (out / v["png"]).stat().st_size > 1000 and v["png"] in report
            with open_features(str(out / "features" / f"{v['model']}-test.h5")) as f:
                assert f.ids == ref.ids
                d = v["best_deepest"]
                x = f.load((d["t"], d["block"]))
                want = linear_cka(x, ref_last)  # CKA <= 1, float32 Grams of D products
                assert d["cka"] == approx_f32(want, n=max(x[0].size, ref_last[0].size), scale=1)
                assert all(r["cka"] <= d["cka"] + 1e-12 for r in v["per_t"])
                assert d["cka"] == max(r["cka"] for r in v["per_t"])
            assert f"({d['cka']:.2f}); the closest block at each t" in report


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


def test_demo_segmentation_section(tmp_path, capsys):
    """--segmentation: seg-linear per (t, block) on demo-seg maps, one figure, one table."""
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--models", "ldae-fmnist,sup-fmnist", "--limit", "40",
                 "--epochs", "1", "--quiet", "--t", "10,300", "--segmentation"]) == 0
    report = (out / "report.md").read_text()
    assert "## Segmentation: mIoU against t per block" in report
    assert "](segmentation_vs_t.png)" in report
    assert (out / "segmentation_vs_t.png").stat().st_size > 1000
    for name in ("ldae-fmnist", "sup-fmnist"):
        with open_features(str(out / "features" / f"{name}-seg-test.h5")) as f:
            assert len(f) == 40 and f.has_masks and f.attrs["data"] == "demo-seg"
            assert all(len(f.shape(k)) == 3 and f.shape(k)[1:] == (4, 4) for k in f.keys)
            # a classifier's pooled vector (sup-fmnist's head) has no map: left out
            assert (None, "head") not in f.keys
        with open(out / name / "segmentation" / "results.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == (6 if name == "ldae-fmnist" else 3)  # 2 t x 3 blocks; 3 blocks
        for r in rows:
            lo, m, hi = float(r["miou_lo"]), float(r["miou"]), float(r["miou_hi"])
            assert 0 <= lo <= m <= hi <= 1
        best = max(rows, key=lambda r: float(r["miou"]))
        key = best["block"] if not best["t"] else f"t={best['t']}, {best['block']}"
        assert f"| {key} | {100 * float(best['miou']):.1f} % [" in report


def test_demo_puts_the_families_on_one_log_snr_axis(tmp_path, capsys):
    """--logsnr picks each family's own t (DDPM: the nearest step; SiT: exact), and the
    accuracy-against-log-SNR figure places each model's linear grid at the recorded log-SNR."""
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--models", "dit-fmnist,sit-fmnist", "--limit", "40",
                 "--epochs", "1", "--quiet", "--logsnr=-2,3", "--blocks", "2"]) == 0
    said = capsys.readouterr()
    assert "dit-fmnist: --logsnr -2 -> t=" in said.out + said.err
    levels = {}
    for name in ("dit-fmnist", "sit-fmnist"):
        with open_features(str(out / "features" / f"{name}-test.h5")) as f:
            levels[name] = sorted(v["logsnr"] for v in f.noise_levels().values())
    assert levels["sit-fmnist"] == [-2.0, 3.0] or np.allclose(levels["sit-fmnist"], [-2, 3])
    assert np.allclose(levels["dit-fmnist"], [-2, 3], atol=0.02)  # 1000 steps: close, not equal
    report = (out / "report.md").read_text()
    assert "## One noise axis" in report and "![accuracy against log-SNR](accuracy_vs_logsnr.png)" in report
    assert (out / "accuracy_vs_logsnr.png").stat().st_size > 1000
