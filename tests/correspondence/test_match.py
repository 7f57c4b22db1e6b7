"""Matching: DIFT's protocol written another way, oracle features, random features."""
import os

import numpy as np
import pytest
import torch

from probe.correspondence import MatchOptions, WarpOptions, match_pair
from probe.correspondence.pck import chance_level, score_pairs, summarise
from probe.correspondence.warp import apply_homography, load_warp

PHOTOS = os.path.join(os.path.dirname(__file__), "..", "fixtures", "imagenet_photos")


def _upsample_matrix(n_in, n_out):
    """nn.Upsample(mode='bilinear', align_corners=False) along one axis, as a matrix."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        s = max(0.0, (i + 0.5) * n_in / n_out - 0.5)
        i0 = min(int(np.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        a[i, i0] += 1 - (s - i0)
        a[i, i1] += s - i0
    return a


def _dift_numpy(src_maps, trg_maps, kps, src_size, trg_size):
    """Upsample both maps to the original sizes, normalise, argmax (DIFT's eval_spair.py)."""
    def up(maps, size):
        w, h = size
        outs = []
        for m in maps:
            ay, ax = _upsample_matrix(m.shape[1], h), _upsample_matrix(m.shape[2], w)
            u = np.einsum("yi,cij,xj->cyx", ay, m.astype(np.float64), ax)
            outs.append(u)
        return outs

    if len(src_maps) > 1:  # each key L2-normalised per location first
        src_maps = [m / np.linalg.norm(m, axis=0, keepdims=True) for m in src_maps]
        trg_maps = [m / np.linalg.norm(m, axis=0, keepdims=True) for m in trg_maps]
    s = np.concatenate(up(src_maps, src_size))
    t = np.concatenate(up(trg_maps, trg_size))
    t = t.reshape(t.shape[0], -1)
    t = t / np.linalg.norm(t, axis=0, keepdims=True)
    out, cos = [], []
    for x, y in kps.astype(int):
        v = s[:, y, x] / np.linalg.norm(s[:, y, x])
        idx = np.argmax(v @ t)
        out.append([idx % trg_size[0], idx // trg_size[0]])
        cos.append(v @ t)
    return np.asarray(out, float), np.asarray(cos)


def _assert_same_argmax(got, want, cos, width):
    """Equal, except where float32 rounding picks another pixel whose similarity (in float64)
    ties the maximum to float32 precision (bilinear maps have near-flat maxima)."""
    diff = np.flatnonzero((got != want).any(axis=1))
    assert len(diff) <= len(got) // 10
    for k in diff:
        at = int(got[k, 1] * width + got[k, 0])
        assert cos[k, at] >= cos[k].max() - 1e-5


@pytest.mark.parametrize("literal", [False, True])
def test_matches_dift_protocol_in_numpy(literal):
    rng = np.random.default_rng(0)
    for trial in range(3):
        c, hs, ws, ht, wt = 24, 7, 9, 6, 10
        src = rng.standard_normal((c, hs, ws)).astype(np.float32)
        trg = rng.standard_normal((c, ht, wt)).astype(np.float32)
        src_size, trg_size = (61, 45), (50, 37)  # odd, non-square originals
        kps = np.c_[rng.integers(0, 61, 12), rng.integers(0, 45, 12)].astype(float)
        want, cos = _dift_numpy([src], [trg], kps, src_size, trg_size)
        got = match_pair([torch.from_numpy(src)], [torch.from_numpy(trg)], kps, src_size,
                         trg_size, MatchOptions(literal=literal, memory_mb=1))
        _assert_same_argmax(got, want, cos, trg_size[0])


def test_two_keys_are_normalised_then_concatenated():
    rng = np.random.default_rng(1)
    src = [rng.standard_normal((8, 6, 6)).astype(np.float32) * 50,  # a loud key
           rng.standard_normal((16, 3, 3)).astype(np.float32)]
    trg = [rng.standard_normal((8, 6, 6)).astype(np.float32) * 50,
           rng.standard_normal((16, 3, 3)).astype(np.float32)]
    kps = np.c_[rng.integers(0, 40, 10), rng.integers(0, 30, 10)].astype(float)
    want, cos = _dift_numpy(src, trg, kps, (40, 30), (35, 33))
    got = match_pair([torch.from_numpy(m) for m in src], [torch.from_numpy(m) for m in trg],
                     kps, (40, 30), (35, 33))
    _assert_same_argmax(got, want, cos, 35)


def test_norms_without_upsampling_equal_the_upsampled_maps():
    """The quadratic form of the four neighbours against upsampling the map itself, at
    sizes that hit every border case (1 x 1 grids, same size, odd ratios)."""
    from probe.correspondence.match import cosine_map, cosine_map_chunked

    g = torch.Generator().manual_seed(0)
    for c, h, w, big_h, big_w in [(16, 7, 9, 45, 61), (8, 1, 5, 9, 31), (4, 6, 6, 6, 6),
                                  (32, 24, 32, 97, 129)]:
        m, v = torch.randn(c, h, w, generator=g), torch.randn(5, c, generator=g)
        fast = cosine_map(v, [m], (big_w, big_h)).double()
        lit = cosine_map_chunked(v, [m], (big_w, big_h), memory_mb=1).double()
        # float32 sums of c products of unit-scale values: a few ulps of 1 per product
        assert (fast - lit).abs().max() <= 1e-6 * c


def _embed(points, freqs):
    """Fourier features of (x, y) points: cosine similarity peaks where the points meet."""
    ph = points @ freqs.T
    return np.concatenate([np.cos(ph), np.sin(ph)], axis=1)


def _oracle_maps(pair, size, scale=1):
    """Maps at 1/scale of the image: the source's pixel coordinates, and the target's
    pulled back through the homography (the coordinate embedding warped with the image)."""
    w, h = size
    freqs = np.random.default_rng(0).standard_normal((48, 2)) * 2 * np.pi / np.geomspace(
        16, 1024, 48)[:, None]
    ys, xs = np.mgrid[0:h // scale, 0:w // scale]
    grid = (np.c_[xs.ravel(), ys.ravel()] + 0.5) * scale - 0.5
    src = _embed(grid, freqs)
    trg = _embed(apply_homography(np.linalg.inv(pair.homography), grid), freqs)
    shape = (h // scale, w // scale, -1)
    return [torch.from_numpy(src.reshape(shape).transpose(2, 0, 1).astype(np.float32))], \
        [torch.from_numpy(trg.reshape(shape).transpose(2, 0, 1).astype(np.float32))]


@pytest.mark.parametrize("options,scale", [
    (MatchOptions(), 1), (MatchOptions(), 8), (MatchOptions(method="mutual"), 8),
    (MatchOptions(method="soft", window=2), 8), (MatchOptions(upsample=False), 8)])
def test_oracle_features_score_100(options, scale):
    ps = load_warp(PHOTOS, WarpOptions(seed=3, points=15, limit=4))
    preds = []
    for p in ps.pairs:
        s, t = _oracle_maps(p, ps.sizes[p.src], scale)
        preds.append(match_pair(s, t, p.src_kps, ps.sizes[p.src], ps.sizes[p.trg], options))
    out = summarise(score_pairs(preds, ps.pairs, ps.sizes, [0.1], "bbox"))
    assert out["points"] > 40
    assert out["per_point"]["0.1"] == 100.0
    if scale == 1 and options.method == "argmax":
        # full resolution: the pixel whose preimage is nearest the keypoint, within half a
        # pixel's diagonal times the homography's local stretch (under 2 for shift 0.15)
        err = np.concatenate([np.linalg.norm(pr - p.trg_kps, axis=1)[p.visible]
                              for pr, p in zip(preds, ps.pairs)])
        assert err.max() <= 2 * np.sqrt(0.5)


def test_random_features_score_chance():
    ps = load_warp(PHOTOS, WarpOptions(seed=5, points=60, shift=0.1))
    g = torch.Generator().manual_seed(0)
    preds, chance = [], []
    for p in ps.pairs:
        w, h = ps.sizes[p.src]
        s = torch.randn(4, h, w, generator=g)
        t = torch.randn(4, h, w, generator=g)
        preds.append(match_pair([s], [t], p.src_kps, (w, h), (w, h)))
        chance += [chance_level(p, (w, h), 0.1, "bbox")] * int(p.visible.sum())
    sc = score_pairs(preds, ps.pairs, ps.sizes, [0.1], "bbox")
    got = sc.correct.sum() / sc.visible.sum()
    c = np.asarray(chance)
    se = np.sqrt((c * (1 - c)).sum()) / len(c)  # independent Bernoulli points
    assert len(c) > 800
    assert abs(got - c.mean()) < 4 * se, (got, c.mean(), se)
