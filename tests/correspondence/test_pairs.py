"""The official layouts, on tiny trees generated here, and their bad inputs."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from probe.correspondence import load_pairs
from probe.errors import ProbeError


def _image(path, w, h):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def make_spair(root, layout=True):
    """SPair-71k: JPEGImages/CAT, PairAnnotation/test/NAME.json, Layout/large/test.txt."""
    _image(f"{root}/JPEGImages/cat/a.jpg", 60, 40)
    _image(f"{root}/JPEGImages/cat/b.jpg", 50, 70)
    ann = dict(src_imname="a.jpg", trg_imname="b.jpg", category="cat",
               src_imsize=[60, 40, 3], trg_imsize=[50, 70, 3],
               src_kps=[[1, 2], [59, 39]], trg_kps=[[3, 4], [49, 69]],
               src_bndbox=[0, 0, 30, 20], trg_bndbox=[5, 6, 25, 46])
    os.makedirs(f"{root}/PairAnnotation/test")
    name = "000001-a-b:cat"
    with open(f"{root}/PairAnnotation/test/{name}.json", "w") as fh:
        json.dump(ann, fh)
    if layout:
        os.makedirs(f"{root}/Layout/large")
        with open(f"{root}/Layout/large/test.txt", "w") as fh:
            fh.write(name + "\n")
    return ann


def test_spair(tmp_path):
    make_spair(tmp_path)
    ps = load_pairs(f"spair:{tmp_path}")
    (p,) = ps.pairs
    assert (p.src, p.trg, p.category) == ("cat/a.jpg", "cat/b.jpg", "cat")
    assert ps.sizes["cat/b.jpg"] == (50, 70) and ps.threshold == "bbox"
    np.testing.assert_array_equal(p.trg_kps, [[3, 4], [49, 69]])
    assert p.trg_bbox == (5, 6, 25, 46)


def test_spair_without_layout_reads_every_json(tmp_path):
    make_spair(tmp_path, layout=False)
    assert len(load_pairs(f"spair:{tmp_path}").pairs) == 1


def test_spair_missing_field_and_outside_point(tmp_path):
    ann = make_spair(tmp_path)
    path = f"{tmp_path}/PairAnnotation/test/000001-a-b:cat.json"
    with open(path, "w") as fh:
        json.dump({k: v for k, v in ann.items() if k != "trg_bndbox"}, fh)
    with pytest.raises(ProbeError, match="missing field 'trg_bndbox'"):
        load_pairs(f"spair:{tmp_path}")
    with open(path, "w") as fh:
        json.dump(dict(ann, trg_kps=[[3, 4], [80, 10]]), fh)
    with pytest.raises(ProbeError, match="outside its 50x70 image"):
        load_pairs(f"spair:{tmp_path}")


def test_missing_folder(tmp_path):
    for name in ("spair", "pf-pascal", "pf-willow", "warp"):
        with pytest.raises(ProbeError, match="not found"):
            load_pairs(f"{name}:{tmp_path}/nope")


def test_pf_pascal(tmp_path):
    from scipy.io import savemat

    _image(f"{tmp_path}/JPEGImages/2008_1.jpg", 80, 60)
    _image(f"{tmp_path}/JPEGImages/2008_2.jpg", 100, 50)
    os.makedirs(f"{tmp_path}/Annotations/bird")
    savemat(f"{tmp_path}/Annotations/bird/2008_1.mat",
            {"kps": np.array([[1, 2], [np.nan, np.nan], [5, 6]]), "bbox": np.array([[0, 0, 40, 30]])})
    savemat(f"{tmp_path}/Annotations/bird/2008_2.mat",
            {"kps": np.array([[7, 8], [9, 9], [10, 11]]), "bbox": np.array([[1, 2, 61, 42]])})
    with open(f"{tmp_path}/test_pairs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source_image", "target_image", "class", "flip"])
        w.writerow(["PF-dataset-PASCAL/JPEGImages/2008_1.jpg",
                    "PF-dataset-PASCAL/JPEGImages/2008_2.jpg", 3, 0])
    ps = load_pairs(f"pf-pascal:{tmp_path}")
    (p,) = ps.pairs
    assert p.category == "bird" and ps.threshold == "img"
    assert p.visible.tolist() == [True, False, True]  # the NaN row is excluded, and counted
    assert p.trg_bbox == (1, 2, 61, 42) and ps.sizes[p.trg] == (100, 50)


def test_pf_willow(tmp_path):
    _image(f"{tmp_path}/car(G)/a.png", 90, 70)
    _image(f"{tmp_path}/car(G)/b.png", 90, 70)
    xa, ya = list(range(10, 20)), list(range(20, 30))
    xb, yb = list(range(30, 40)), list(range(40, 50))
    with open(f"{tmp_path}/test_pairs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["imageA", "imageB"] + [f"c{i}" for i in range(40)])
        w.writerow(["PF-dataset/car(G)/a.png", "PF-dataset/car(G)/b.png"] + xa + ya + xb + yb)
    ps = load_pairs(f"pf-willow:{tmp_path}")
    (p,) = ps.pairs
    assert p.category == "car(G)" and ps.threshold == "kps"
    np.testing.assert_array_equal(p.src_kps[:, 0], xa)
    np.testing.assert_array_equal(p.trg_kps[:, 1], yb)


def test_warp_pairs_are_exact_and_reproducible():
    root = os.path.join(os.path.dirname(__file__), "..", "fixtures", "imagenet_photos")
    from probe.correspondence import WarpOptions
    from probe.correspondence.warp import apply_homography

    a = load_pairs(f"warp:{root}", warp=WarpOptions(seed=1, points=30), limit=3)
    b = load_pairs(f"warp:{root}", warp=WarpOptions(seed=1, points=30), limit=3)
    assert len(a.pairs) == 3 and "seed=1" in a.spec
    for p, q in zip(a.pairs, b.pairs):
        np.testing.assert_array_equal(p.trg_kps, q.trg_kps)
        np.testing.assert_array_equal(a.images[p.trg], b.images[q.trg])
        # targets are the exact images of the source points; the rest are invisible
        t = apply_homography(p.homography, p.src_kps)
        np.testing.assert_allclose(p.trg_kps[p.visible], t[p.visible])
        out = ((t < 0) | (t > 255)).any(axis=1)
        assert (out == ~p.visible).all()


def test_warp_demo_data():
    ps = load_pairs("warp:demo", limit=2)
    assert ps.sizes[ps.pairs[0].src] == (28, 28)


def test_warped_image_is_the_source_seen_through_the_homography():
    from scipy.ndimage import map_coordinates

    from probe.correspondence.warp import random_homography, warp_image

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    h = random_homography(40, 30, 0.1, rng)
    out = warp_image(src, h)
    ys, xs = np.mgrid[0:30, 0:40]
    back = np.linalg.inv(h) @ np.stack([xs.ravel(), ys.ravel(), np.ones(1200)])
    bx, by = back[0] / back[2], back[1] / back[2]
    want = map_coordinates(src.astype(float), [by, bx], order=1, mode="constant", cval=0)
    inside = (bx >= 0) & (bx <= 39) & (by >= 0) & (by <= 29)
    # uint8 rounding; the border row of pixels is blended with the zero padding
    assert np.abs(out.ravel()[inside].astype(float) - want[inside]).max() <= 1
