"""examples/findings.py on a few images: the table and verdicts follow the study's own results."""
import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_findings_script_table_and_verdicts(tmp_path):
    out = tmp_path / "findings"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "findings.py"),
                        "--out", str(out), "--data", "demo", "--models",
                        "ldae-fmnist,dae-pixel-fmnist,sup-fmnist", "--limit", "60", "--epochs", "1",
                        "--quiet"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg"))
    assert r.returncode == 0, r.stderr[-2000:]
    text = (out / "findings.md").read_text()
    sections = {m: json.load(open(out / m / "section.json"))
                for m in ("ldae-fmnist", "dae-pixel-fmnist", "ldae-fmnist-random-init")}
    ldae, pixel, rand = (sections[m]["best"]["top1"] for m in sections)
    assert f"| `ldae-fmnist` | t={sections['ldae-fmnist']['best']['t']}, " in text
    assert f"{100 * rand:.1f} |" in text
    verdict = "holds" if ldae - pixel > 0.008 else ("tie" if abs(ldae - pixel) <= 0.008
                                                     else "does not hold")
    assert f"**Latent noise beats pixel noise** (l-DAE paper): {verdict}." in text
    assert text.count("**An attention head beats a linear probe**") == 2
    assert "**A middle latent dimension is best** (l-DAE paper): not measured" in text
    # the matched-size heads: about the linear head's parameter count, reported per model
    matched = json.load(open(out / "ldae-fmnist" / "heads-matched.json"))["rows"]
    params = {r["head"]: r["params"] for r in matched}
    assert set(params) == {"linear", "mlp", "cnn", "attention"}
    assert all(0.3 < p / params["linear"] < 2 for p in params.values()), params
    att = next(r["top1"] for r in matched if r["head"] == "attention")
    assert f"({100 * att:.1f} vs" in text and "at matched size" in text
    # the supervised reference: its linear probe row, and the CKA read from the study's CSVs
    ref = json.load(open(out / "sup-fmnist" / "section.json"))
    assert ref["ts"] is None and not (out / "sup-fmnist-random-init").exists()
    assert (f"| `sup-fmnist` (supervised reference, no t) | {ref['best']['block']} | "
            f"{100 * ref['best']['top1']:.1f} |") in text
    for m in ("ldae-fmnist", "dae-pixel-fmnist"):
        with open(out / f"cka-{m}-vs-sup-fmnist.csv") as fh:
            rows = list(csv.reader(fh))
        values = [[float(v) for v in r[1:]] for r in rows[1:]]
        top = max(max(r) for r in values)
        i = next(i for i, r in enumerate(values) if max(r) == top)
        line = next(l for l in text.splitlines() if l.startswith(f"- `{m}` vs `sup-fmnist`"))
        assert f"Most similar pair overall: {rows[i + 1][0].replace('t', 't=', 1).replace('/', ', ')} " \
            in line and f"({top:.2f})." in line
        assert 0 < top <= 1 + 1e-9
