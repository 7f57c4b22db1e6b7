"""PCK against values worked out by hand on a tiny fixture."""
import numpy as np
import pytest

from probe.correspondence.pairs import Pair, clean_keypoints
from probe.correspondence.pck import chance_level, score_pairs, summarise, threshold
from probe.errors import ProbeError

SIZES = {"a": (100, 50), "b": (200, 100), "c": (40, 40), "d": (40, 40)}


def _pair(src, trg, kps, box, cat):
    s, t, v = clean_keypoints(kps, kps, SIZES[src], SIZES[trg], "fixture")
    return Pair(src, trg, s, t, v, box, cat)


@pytest.fixture
def fixture():
    # pair 1 (cat "x"): target b (200 x 100), bbox 20 wide, 10 high -> bbox thr 20, img thr 200;
    #   4 points, the 4th padded with -1; predictions off by 1, 3, 30 px -> bbox@0.1 (2 px):
    #   1 of 3 correct; img@0.1 (20 px): 2 of 3 correct
    # pair 2 (cat "y"): target d (40 x 40), bbox 40 -> thr 40 (both); 1 point, off by 3 px:
    #   bbox@0.1 (4 px) correct, img@0.1 (4 px) correct
    p1 = _pair("a", "b", [[10, 10], [20, 20], [30, 30], [-1, -1]], (0, 0, 20, 10), "x")
    p2 = _pair("c", "d", [[5, 5]], (0, 0, 40, 40), "y")
    preds = [np.array([[11, 10], [20, 23], [60, 30], [0, 0]], float), np.array([[8, 5]], float)]
    return [p1, p2], preds


def test_per_point_per_image_and_category_by_hand(fixture):
    pairs, preds = fixture
    s = summarise(score_pairs(preds, pairs, SIZES, [0.1], "bbox"))
    assert s["points"] == 4 and s["invisible_points"] == 1 and s["pairs"] == 2
    assert s["per_point"]["0.1"] == pytest.approx(100 * 2 / 4)           # (1 + 1) / (3 + 1)
    assert s["per_image"]["0.1"] == pytest.approx(100 * (1 / 3 + 1) / 2)  # differs from per point
    assert s["per_category"]["0.1"] == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert s["categories"]["x"]["points"] == 3 and s["categories"]["x"]["invisible"] == 1


def test_image_threshold_differs_from_bbox(fixture):
    pairs, preds = fixture
    s = summarise(score_pairs(preds, pairs, SIZES, [0.1, 0.2], "img"))
    assert s["per_point"]["0.1"] == pytest.approx(100 * 3 / 4)
    assert s["per_image"]["0.1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert threshold(pairs[0], "img", SIZES["b"]) == 200
    assert threshold(pairs[0], "bbox", SIZES["b"]) == 20
    # the keypoints' box: x 10..30, y 10..30 -> 20
    assert threshold(pairs[0], "kps", SIZES["b"]) == 20


def test_padded_point_never_counts_even_when_predicted_right(fixture):
    pairs, preds = fixture
    preds[0][3] = [-1, -1]  # "predicting" the padding exactly must not add a correct point
    s = summarise(score_pairs(preds, pairs, SIZES, [0.1], "bbox"))
    assert s["per_point"]["0.1"] == pytest.approx(50.0)


def test_rejected_match_is_wrong(fixture):
    pairs, preds = fixture
    preds[1][0] = np.nan
    s = summarise(score_pairs(preds, pairs, SIZES, [0.1], "bbox"))
    assert s["per_point"]["0.1"] == pytest.approx(25.0)


@pytest.mark.parametrize("alpha", [0, -0.1])
def test_alpha_must_be_positive(fixture, alpha):
    pairs, preds = fixture
    with pytest.raises(ProbeError, match="alpha must be > 0"):
        score_pairs(preds, pairs, SIZES, [alpha], "bbox")


def test_keypoint_outside_its_image_is_refused():
    with pytest.raises(ProbeError, match="outside"):
        clean_keypoints([[150, 10]], [[1, 1]], (100, 50), (100, 50), "here")


def test_chance_level_counts_pixels_in_the_disc():
    p = _pair("c", "d", [[20, 20]], (0, 0, 40, 40), "y")
    # radius 0.1 * 40 = 4 px around (20, 20), wholly inside: the lattice points of the disc
    n = sum(1 for x in range(-4, 5) for y in range(-4, 5) if x * x + y * y <= 16)
    assert chance_level(p, (40, 40), 0.1, "bbox") == pytest.approx(n / 1600)
