"""scripts/seg_findings.py on a few images: the table reports, per model, the key with the
best validation mIoU among the fits it saved."""
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_seg_findings_table_follows_the_saved_fits(tmp_path):
    out = tmp_path / "seg"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "seg_findings.py"),
                        "--out", str(out), "--models", "ldae-fmnist", "--limit", "24",
                        "--epochs", "1", "--no-random-init"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg",
                                PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-2000:]
    text = (out / "findings.md").read_text()
    fits = [json.load(open(p)) for p in glob.glob(str(out / "results" / "ldae-fmnist-*.json"))]
    assert {f["t"] for f in fits} == {10, 100} and all(f["num_eval"] == 24 for f in fits)
    best = max(fits, key=lambda f: f["val_miou"])
    lo, hi = best["miou_ci"]
    assert (f"| `ldae-fmnist` | t={best['t']}, {best['block']} | {100 * best['miou']:.1f} "
            f"[{100 * lo:.1f}, {100 * hi:.1f}]") in text
    assert "| `pixels` | pixels |" in text
