"""Datasets with masks: Fashion-MNIST's threshold masks, and VOC 2012, ADE20K and segfolder
trees generated here in their official layouts; masks stay aligned with their images and
travel with their ids into the feature file (also across a resumed run)."""
import gzip
import os

import numpy as np
import pytest
from PIL import Image

import probe
from probe.data import load_dataset
from probe.data.segmentation import FMNIST_THRESHOLD
from probe.errors import ProbeError
from probe.store import open_features


def _idx(path, a):
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + a.astype(np.uint8).tobytes())


def test_fashion_mnist_seg_threshold_masks(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28))
    images[:, :3] = 0
    labels = np.array([3, 0, 9, 9, 5])
    _idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    _idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), labels)
    ds = load_dataset(f"fashion-mnist-seg:{tmp_path}", "test")
    assert ds.mask_class_names[-1] == "background" and len(ds.mask_class_names) == 11
    m = ds.load_masks(range(5))
    for i in range(5):
        want = np.full((28, 28), 10)
        want[images[i] >= FMNIST_THRESHOLD] = labels[i]
        assert np.array_equal(m[i], want)
    assert list(ds.labels) == list(labels)


def test_demo_seg_masks_follow_the_image_when_resized():
    ds = load_dataset("demo-seg", "test", image_size=56, channels=1)
    small = load_dataset("demo-seg", "test")
    m, m28 = ds.load_masks([0, 7]), small.load_masks([0, 7])
    # resized by two with nearest neighbours: each mask pixel doubles
    assert np.array_equal(m, np.kron(m28, np.ones((2, 2), np.uint8)))
    assert ds.ids == small.ids and ds.ids[0].startswith("test/")


def _palette_png(path, a):
    im = Image.fromarray(a.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _voc_tree(root, n=3, hw=(60, 80)):
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(1)
    raws = {}
    for i in range(n):
        name = f"2007_00{i:04d}"
        Image.fromarray(rng.integers(0, 256, hw + (3,), dtype=np.uint8)).save(
            base / "JPEGImages" / f"{name}.jpg")
        raw = rng.integers(0, 21, hw)
        raw[:, :2] = 255
        _palette_png(base / "SegmentationClass" / f"{name}.png", raw)
        raws[name] = raw
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(raws) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text(list(raws)[0] + "\n")
    return raws


def test_voc2012_layout_palette_masks_resized_and_cropped_like_the_image(tmp_path):
    raws = _voc_tree(tmp_path)
    ds = load_dataset(f"voc2012:{tmp_path}", "train", image_size=30)
    assert len(ds) == 3 and ds.mask_class_names[0] == "background" and len(ds.mask_class_names) == 21
    assert ds.ignore_index == 255
    m = ds.load_masks(range(3))
    for k, raw in enumerate(raws.values()):
        # 60x80 -> 30x40 (nearest: source pixel 2i+1), centre crop 30 columns from 40 (offset 5)
        want = raw[1::2, 1::2][:, 5:35]
        assert np.array_equal(m[k], want)
    assert len(load_dataset(f"voc2012:{tmp_path}", "test", image_size=30)) == 1  # val


def test_ade20k_layout_zero_ignored_rest_shifted(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for d in ("images/training", "annotations/training", "images/validation",
              "annotations/validation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 151, (16, 16))
    raw[0, 0], raw[0, 1] = 0, 150
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
        base / "images/training/ADE_train_00000001.jpg")
    Image.fromarray(raw.astype(np.uint8), mode="L").save(
        base / "annotations/training/ADE_train_00000001.png")
    names = ["wall", "building, edifice"] + [f"thing{k}" for k in range(3, 151)]
    (base / "objectInfo150.txt").write_text(
        "Idx\tRatio\tTrain\tVal\tName\n" + "".join(f"{k}\t0.1\t1\t1\t{n}\n"
                                                  for k, n in enumerate(names, 1)))
    ds = load_dataset(f"ade20k:{tmp_path}", "train")
    assert len(ds.mask_class_names) == 150 and ds.mask_class_names[:2] == ["wall", "building"]
    m = ds.load_masks([0])[0]
    assert m[0, 0] == 255 and m[0, 1] == 149
    assert np.array_equal(m[raw > 0], raw[raw > 0] - 1)
    with pytest.raises(ProbeError, match="no images"):
        load_dataset(f"ade20k:{tmp_path}", "val")


def _segfolder(root, n=6, size=12, bad=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("sky\nsea\nboat\n")
    rng = np.random.default_rng(3)
    for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        if i == bad:
            (root / "images" / f"im{i}.png").write_bytes(b"not a png")
        else:
            Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(((np.arange(size)[:, None] + i) % 3 * np.ones(size, int))
                        .astype(np.uint8), mode="L").save(root / "masks" / f"im{i}.png")


def test_segfolder_layout_and_errors(tmp_path):
    _segfolder(tmp_path / "s")
    ds = load_dataset(f"segfolder:{tmp_path / 's'}", "train")
    assert ds.mask_class_names == ["sky", "sea", "boat"] and ds.ids[0] == os.path.join("images", "im0.png")
    os.remove(tmp_path / "s" / "masks" / "im3.png")
    with pytest.raises(ProbeError, match="masks are missing"):
        load_dataset(f"segfolder:{tmp_path / 's'}", "train")
    with pytest.raises(ProbeError, match="classes.txt"):
        load_dataset(f"segfolder:{tmp_path}", "train")


def test_masks_travel_with_their_ids_through_a_resumed_extraction(tmp_path):
    root = tmp_path / "s"
    _segfolder(root, n=6, bad=3)  # image 3 cannot be read: the first run stops there
    out = tmp_path / "f.h5"
    kw = dict(model="ldae-fmnist", data=f"segfolder:{root}", t=10, blocks="blocks.1",
              out=out, pool="none", batch_size=2, progress=False, device="cpu",
              log=lambda *_: None)
    with pytest.raises(ProbeError, match="cannot decode"):
        probe.extract(**kw)
    assert not out.exists() and (tmp_path / "f.h5.partial").exists()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "images" / "im3.png")
    probe.extract(**kw)  # resumes: batches 0 stays, the rest are done now
    ds = load_dataset(f"segfolder:{root}", "train", image_size=28)
    with open_features(out) as f:
        assert f.has_masks and f.mask_class_names == ["sky", "sea", "boat"]
        assert f.masks.shape == (6, 28, 28)
        where = {i: n for n, i in enumerate(ds.ids)}
        want = ds.load_masks([where[i] for i in f.ids])
        assert np.array_equal(f.masks[...], want)
        assert "nearest" in f.masks.attrs["description"]


@pytest.mark.slow
def test_masks_of_a_two_rank_run_match_one_process(tmp_path):
    import subprocess
    import sys

    flags = ["extract", "--model", "ldae-fmnist", "--data", "demo-seg", "--limit", "20",
             "--batch-size", "4", "--pool", "none", "--t", "10", "--blocks", "1", "--quiet",
             "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(29600 + os.getpid() % 1000), "-m", "probe", *flags,
                        "--out", str(tmp_path / "d.h5")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    probe.extract(model="ldae-fmnist", data="demo-seg", limit=20, batch_size=4, pool="none",
                  t=10, blocks="1", out=tmp_path / "s.h5", device="cpu", progress=False,
                  log=lambda *_: None)
    with open_features(tmp_path / "d.h5") as a, open_features(tmp_path / "s.h5") as b:
        assert a.ids == b.ids and np.array_equal(a.masks[...], b.masks[...])
        ds = load_dataset("demo-seg", "train", image_size=28, channels=1)
        assert np.array_equal(a.masks[...], ds.load_masks(range(20)))
