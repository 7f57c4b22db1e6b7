"""Feature files without a timestep: their layout and selection, and the command line end
to end — a real pretrained EfficientNet-Lite0 on real photos, offline, against a diffusion
model's file in `probe cka`, and `probe fit` on such a file."""
import csv
import json
import os
import socket

import h5py
import numpy as np
import pytest

from probe.cli import main
from probe.errors import ProbeError
from probe.store import open_features, write_features
from tolerances import approx_f32, assert_close_f32

from extractors.test_reference import EFF, PHOTOS, lite0_weights


def cli_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe: error: ") and "\n" not in err
    return err


def test_no_t_file_layout_and_selection(tmp_path):
    path = str(tmp_path / "ref.h5")
    rng = np.random.default_rng(0)
    feats = {(None, "stem"): rng.normal(size=(4, 3)), (None, "stages.2"): rng.normal(size=(4, 5))}
    write_features(path, feats, labels=[0, 1, 0, 1], attrs={"model": "timm:x"})
    with h5py.File(path) as h5:  # one dataset per block right under /features
        assert isinstance(h5["features/stages.2"], h5py.Dataset)
        assert "t" not in h5["features/stages.2"].attrs
    with open_features(path) as f:
        assert f.keys == [(None, "stem"), (None, "stages.2")]
        assert f.timesteps == [] and not f.has_timesteps
        assert f.select(blocks=2) == [(None, "stages.2")]
        assert f.select(keys="stages.2,1") == [(None, "stem"), (None, "stages.2")]
        assert f.key("stages.2") == (None, "stages.2")
        want = feats[(None, "stages.2")]  # stored as float32: one rounding per value
        assert_close_f32(f.load("stages.2"), want, scale=np.abs(want))
        for bad in (dict(t=10), dict(keys="t10/stem"), dict(keys="t10")):
            with pytest.raises(ProbeError, match="timm:x, which has no timestep .*drop --t"):
                f.select(**bad)
    with pytest.raises(ProbeError, match="not both"):
        write_features(str(tmp_path / "mixed.h5"), {(None, "a"): np.zeros((2, 1)),
                                                    (10, "a"): np.zeros((2, 1))}, labels=[0, 1])


def linear_cka(x, y):
    """Kornblith et al. 2019, linear kernel, biased HSIC: ||Y^T X||^2 / (||X^T X|| ||Y^T Y||)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.fixture
def offline(monkeypatch):
    def refuse(*a, **k):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_cli_lite0_offline_then_cka_against_a_diffusion_file(tmp_path, capsys, offline):
    ref, dit = str(tmp_path / "lite0.h5"), str(tmp_path / "dit.h5")
    data = f"imagefolder:{PHOTOS}"
    assert main(["extract", "--model", EFF, "--checkpoint", lite0_weights(), "--data", data,
                 "--limit", "8", "--out", ref, "--quiet", "--threads", "1"]) == 0
    assert main(["extract", "--model", "dit-fmnist", "--data", data, "--t", "10,100",
                 "--limit", "8", "--blocks", "1,4", "--out", dit, "--quiet", "--threads",
                 "1"]) == 0
    with open_features(ref) as f:
        assert f.attrs["timesteps"] == [] and f.attrs["schedule"] is None
        assert f.blocks == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "features",
                            "head"]
        assert "normalise mean=[0.5, 0.5, 0.5]" in f.attrs["transform"]
        assert "resize shorter side to 256" in f.attrs["transform"]
        mine = {b: f.load((None, b)) for b in f.blocks}
        ref_ids = f.ids
    capsys.readouterr()
    assert "drop --t" in cli_error(capsys, ["info", ref, "--t", "10"])
    assert "drop --t" in cli_error(capsys, ["extract", "--model", EFF, "--checkpoint",
                                            lite0_weights(), "--data", data, "--t", "10",
                                            "--out", str(tmp_path / "x.h5")])
    out = str(tmp_path / "cka.png")
    assert main(["cka", dit, ref, "--out", out, "--quiet", "--threads", "1"]) == 0
    assert os.path.getsize(out) > 10_000
    with open(out[:-4] + ".csv") as fh:
        table = list(csv.reader(fh))
    assert table[0][1:] == list(mine)  # columns: bare block names, no t
    assert [r[0] for r in table[1:]] == ["t10/blocks.0", "t10/blocks.3", "t100/blocks.0",
                                         "t100/blocks.3"]
    with open_features(dit) as f:
        order = [f.ids.index(i) for i in ref_ids]  # paired by sample id
        x = f.load("t100/blocks.3")[order]
    got = float(table[3 + 1][1 + 4])
    # CKA (at most 1) from float32 Grams summing d products per entry
    want = linear_cka(x.astype(np.float64), mine["blocks.6"])
    assert got == approx_f32(want, n=max(x.shape[1], mine["blocks.6"].shape[1]), scale=1)


def test_cli_fit_reads_a_no_t_file(tmp_path, capsys):
    vit = ["--model", "timm:vit_tiny_patch16_224", "--random-init", "--config", "img_size=28",
           "--config", "patch_size=7", "--config", "embed_dim=32", "--config", "depth=2",
           "--config", "num_heads=2", "--config", "in_chans=1", "--pool", "cls", "--limit",
           "120", "--quiet", "--threads", "1"]
    files = {s: str(tmp_path / f"{s}.h5") for s in ("train", "test")}
    for split, path in files.items():
        assert main(["extract", *vit, "--split", split, "--out", path]) == 0
    out = str(tmp_path / "fit.json")
    assert main(["fit", files["train"], "--test", files["test"], "--blocks", "2", "--head",
                 "knn", "--out", out, "--threads", "1", "--quiet"]) == 0
    assert "knn head on blocks.1:" in capsys.readouterr().out
    with open(out) as fh:
        s = json.load(fh)
    assert s["t"] is None and s["block"] == "blocks.1"
    assert "drop --t" in cli_error(capsys, ["fit", files["train"], "--t", "10"])
