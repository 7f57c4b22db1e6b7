"""Segmentation heads: an oracle map gives mIoU ~ 1, noise gives the majority class, the
DINOv2-protocol head agrees with scikit-learn's logistic regression per pixel, and bad
input is a one-line error."""
import json

import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.store import write_features

K = 4


def blocky_masks(n, grid, scale, seed=0):
    """Masks made of grid x grid blocks of scale x scale pixels, and the block labels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, K, (n, grid, grid))
    return np.kron(coarse, np.ones((scale, scale), np.int64)).astype(np.uint8), coarse


def one_hot_maps(coarse):
    return np.eye(K, dtype=np.float32)[coarse].transpose(0, 3, 1, 2)  # (N, K, g, g)


def _write(path, maps, masks, pooled=None, **kw):
    feats = {"t10/blocks.0": maps}
    if pooled is not None:
        feats["t10/blocks.1"] = pooled
    return write_features(path, feats, labels=np.zeros(len(maps), int), masks=masks,
                          mask_class_names=[f"c{i}" for i in range(K)], **kw)


@pytest.mark.parametrize("head", ["seg-linear", "seg-mlp"])
def test_oracle_features_give_miou_near_one(tmp_path, head):
    # 4x4 one-hot maps of the block labels, 8x8 masks.  Upsampling by 2, every mask pixel
    # takes 9/16 of its own block's logits, at most 3/16 from each neighbour, so a head
    # can be exact.  (By 4, a corner pixel takes 0.39 from its block and 0.47 from two
    # side neighbours when they share a class: no linear head on bilinear logits is.)
    masks, coarse = blocky_masks(48, 4, 2)
    path = _write(tmp_path / "o.h5", one_hot_maps(coarse), masks)
    r = probe.fit(path, keys="t10/blocks.0", head=head, epochs=30, lr=0.05, batch_size=16,
                  val_fraction=0.25, device="cpu", progress=False, bootstrap=0)
    assert r["miou"] > 0.98, r["per_class_iou"]
    assert r["num_eval"] == 12


def test_random_features_give_the_majority_class(tmp_path):
    rng = np.random.default_rng(1)
    n, size = 200, 8
    masks = np.where(rng.random((n, size, size)) < 0.7, 0, rng.integers(1, K, (n, size, size)))
    maps = rng.standard_normal((n, 2, 4, 4)).astype(np.float32)  # nothing to learn from
    path = _write(tmp_path / "r.h5", maps, masks.astype(np.uint8))
    r = probe.fit(path, keys="t10/blocks.0", head="seg-linear", epochs=20, lr=0.05,
                  batch_size=32, val_fraction=0.25, device="cpu", progress=False, bootstrap=0)
    eval_masks = masks[np.sort(np.asarray(probe.heads.setup.split_rows(
        np.zeros(n, int), 0.25, 0)[1]))]
    majority = (eval_masks == 0).mean()
    # predicting the majority class everywhere: accuracy = its share, its IoU the same,
    # the other classes 0
    assert r["pixel_accuracy"] == pytest.approx(majority, abs=0.03)
    assert r["miou"] == pytest.approx(majority / K, abs=0.03)


def test_linear_head_agrees_with_logistic_regression(tmp_path):
    """Maps at the mask's size: BN + 1x1 conv is logistic regression on each pixel."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from probe.heads.dense.metrics import image_stats, segmentation_metrics

    rng = np.random.default_rng(2)
    n, size, c = 40, 6, 5
    masks = rng.integers(0, K, (n, size, size)).astype(np.uint8)
    means = rng.standard_normal((K, c)) * 1.2
    maps = (means[masks] + rng.standard_normal((n, size, size, c))).astype(np.float32)
    maps = maps.transpose(0, 3, 1, 2)
    train, test = _write(tmp_path / "a.h5", maps[:30], masks[:30]), \
        _write(tmp_path / "b.h5", maps[30:], masks[30:])
    r = probe.fit(train, keys="t10/blocks.0", head="seg-linear", test=test, epochs=100,
                  lr=0.05, weight_decay=0.0, batch_size=10, val_fraction=0.0, device="cpu",
                  progress=False, bootstrap=0)
    x = maps.transpose(0, 2, 3, 1).reshape(n, -1, c)
    scaler = StandardScaler().fit(x[:30].reshape(-1, c))
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x[:30].reshape(-1, c)),
                                                       masks[:30].ravel())
    pred = clf.predict(scaler.transform(x[30:].reshape(-1, c))).reshape(10, size, size)
    stats = image_stats(torch.from_numpy(pred), torch.from_numpy(masks[30:].astype(np.int64)),
                        K, 255).numpy()
    sk = segmentation_metrics(stats, [str(i) for i in range(K)], resamples=0)
    assert sk["miou"] > 0.4  # a task with something to learn
    # the margin: 2 points of mIoU (360 test pixels: one pixel is 0.3 points of accuracy)
    assert r["miou"] == pytest.approx(sk["miou"], abs=0.02)
    assert r["pixel_accuracy"] == pytest.approx(sk["pixel_accuracy"], abs=0.02)


def test_several_keys_and_the_ensemble(tmp_path):
    masks, coarse = blocky_masks(24, 4, 2)
    oh = one_hot_maps(coarse)
    coarse2 = oh[:, :, ::2, ::2]  # a second key on a coarser grid
    path = write_features(tmp_path / "m.h5", {"t10/blocks.0": oh, "t10/blocks.1": coarse2},
                          labels=np.zeros(24, int), masks=masks,
                          mask_class_names=[f"c{i}" for i in range(K)])
    r = probe.fit(path, keys="t10/blocks.0,t10/blocks.1", head="seg-ensemble", members=3,
                  epochs=20, lr=0.05, batch_size=8, device="cpu", progress=False,
                  val_fraction=0.25, bootstrap=50, out=tmp_path / "e.json")
    assert r["keys"] == ["t10/blocks.0", "t10/blocks.1"]
    assert r["input"].count("map") == 2
    assert r["miou"] > 0.9
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["miou"] == r["miou"] and len(saved["miou_ci"]) == 2
    assert (tmp_path / "e_masks.png").stat().st_size > 1000


def test_bad_input_is_one_line(tmp_path):
    masks, coarse = blocky_masks(8, 4, 2)
    no_masks = write_features(tmp_path / "n.h5", {"t10/blocks.0": one_hot_maps(coarse)},
                              labels=np.arange(8) % 2)
    with pytest.raises(ProbeError, match="has no masks"):
        probe.fit(no_masks, head="seg-linear", progress=False)
    pooled = _write(tmp_path / "p.h5", one_hot_maps(coarse), masks,
                    pooled=np.zeros((8, 3), np.float32))
    with pytest.raises(ProbeError, match="needs a spatial map.*--pool none"):
        probe.fit(pooled, keys="t10/blocks.1", task="segmentation", progress=False)
    with pytest.raises(ProbeError, match="unknown segmentation head"):
        probe.fit(pooled, keys="t10/blocks.0", head="seg-lineer", progress=False)

@pytest.mark.parametrize("args", [["--head", "seg-linear"],
                                  ["--task", "segmentation", "--solver", "lbfgs"]])
def test_cli_bad_input_is_one_line(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    masks, coarse = blocky_masks(8, 4, 2)
    path = (write_features(tmp_path / "n.h5", {"t10/blocks.0": one_hot_maps(coarse)},
                           labels=np.arange(8) % 2) if args[0] == "--head"
            else _write(tmp_path / "c.h5", one_hot_maps(coarse), masks))
    assert main(["fit", str(path), "--keys", "t10/blocks.0", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.glob("*.json")) == []


def test_cli_writes_json_and_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    masks, coarse = blocky_masks(16, 4, 2)
    path = _write(tmp_path / "c.h5", one_hot_maps(coarse), masks)
    assert main(["fit", str(path), "--task", "segmentation", "--epochs", "2", "--device",
                 "cpu", "-q", "--out", "r.json"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "per-class IoU" in out
    s = json.loads((tmp_path / "r.json").read_text())
    assert s["head"] == "seg-linear" and s["task"] == "segmentation"
    assert (tmp_path / "r_masks.png").exists()


def test_compare_segmentation_grid(tmp_path, capsys):
    masks, coarse = blocky_masks(16, 4, 2)
    oh = one_hot_maps(coarse)
    path = write_features(tmp_path / "g.h5", {"t10/a": oh, "t100/a": oh * 0.5},
                          labels=np.zeros(16, int), masks=masks,
                          mask_class_names=[f"c{i}" for i in range(K)])
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--task", "segmentation", "--fused", "--epochs", "2",
                 "--bootstrap", "10", "--device", "cpu", "-q", "--out", str(out)]) == 0
    import csv

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["keys"] for r in rows] == ["t10/a", "t100/a", "t10/a + t100/a"]
    assert all(r["head"] == "seg-linear" for r in rows)
    s = json.loads((out / "results.json").read_text())
    assert [x["miou"] for x in s] == [float(r["miou"]) for r in rows]
    assert (out / "miou_vs_t.png").exists() and "mIoU" in capsys.readouterr().out


def test_ensemble_prediction_is_the_members_majority_vote(monkeypatch):
    from probe.heads.dense.modules import SegMLP, predict_labels

    head = SegMLP(2, 3, out_size=2, hidden=(4,), members=3)
    picks = torch.tensor([[[0, 1], [2, 2]],    # member 1
                          [[0, 2], [1, 2]],    # member 2
                          [[1, 2], [0, 1]]])   # member 3
    logits = [torch.nn.functional.one_hot(p, 3).permute(2, 0, 1)[None].float() for p in picks]
    monkeypatch.setattr(head, "member_logits", lambda xs: logits)
    got = predict_labels(head, [torch.zeros(1, 2, 2, 2)])[0]
    # per pixel: (0,0,1) -> 0; (1,2,2) -> 2; (2,1,0) all differ -> the lowest, 0; (2,2,1) -> 2
    assert got.tolist() == [[0, 2], [0, 2]]


def test_fusion_weighs_the_informative_key_up(tmp_path):
    masks, coarse = blocky_masks(32, 4, 2)
    rng = np.random.default_rng(4)
    noise = rng.standard_normal((32, K, 4, 4)).astype(np.float32)
    path = write_features(tmp_path / "f.h5", {"t10/good": one_hot_maps(coarse),
                                              "t10/noise": noise},
                          labels=np.zeros(32, int), masks=masks,
                          mask_class_names=[f"c{i}" for i in range(K)])
    r = probe.fit(path, keys="t10/good,t10/noise", head="seg-fusion", dim=16, epochs=15,
                  batch_size=8, device="cpu", progress=False, val_fraction=0.25, bootstrap=0)
    w = r["key_weights"]
    assert set(w) == {"t10/good", "t10/noise"} and sum(w.values()) == pytest.approx(1)
    assert w["t10/good"] > 0.7 and r["miou"] > 0.9
