"""``warp:ROOT``: every image paired with a copy of itself under a known random homography.

Real images, exact ground truth, nothing to download.  For each image (in the folder's
sorted order) a homography is drawn from ``(seed, image id)``: the four corners move by up
to ``shift`` times the image side, and an optional photometric jitter scales brightness and
contrast.  The target is the source resampled through the inverse homography (bilinear,
pixel (i, j) at x = j, y = i, as the keypoints), black outside the source.  Keypoints are
sampled at source pixels; their target positions are the exact images ``H (x, y, 1)``.
Points that land outside the target are not visible.  The target's bounding box is the
extent of the warped image (the warped source corners, clipped to the target).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from ..errors import ProbeError
from .pairs import Pair, PairSet, clean_keypoints


@dataclass(frozen=True)
class WarpOptions:
    """How ``warp:`` pairs are drawn (all recorded in the pair set's spec)."""
    seed: int = 0
    points: int = 20        # keypoints per pair
    shift: float = 0.15     # corner displacement, as a fraction of the image side
    jitter: float = 0.0     # photometric: brightness and contrast scaled by 1 +- jitter
    limit: int | None = None

    def describe(self) -> str:
        return f"seed={self.seed},points={self.points},shift={self.shift:g},jitter={self.jitter:g}"


def _rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 H (H[2,2] = 1) with dst ~ H src for four (x, y) point pairs."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    h = np.linalg.solve(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, 2) points (x, y) -> their images under h."""
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:3]


def random_homography(width: int, height: int, shift: float, rng: np.random.Generator
                      ) -> np.ndarray:
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]],
                       dtype=np.float64)
    moved = corners + rng.uniform(-shift, shift, size=(4, 2)) * [width - 1, height - 1]
    return homography_from_points(corners, moved)


def warp_image(image: np.ndarray, h: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, C]) -> the same image seen through h: target pixel q takes the source
    value at h^-1 q (bilinear), 0 where that falls outside the source."""
    import torch
    import torch.nn.functional as F

    hh, ww = image.shape[:2]
    ys, xs = np.mgrid[0:hh, 0:ww]
    src = apply_homography(np.linalg.inv(h), np.c_[xs.ravel(), ys.ravel()].astype(np.float64))
    # align_corners=True: -1 and 1 are the centres of the first and last pixels, so a
    # source point x maps to pixel coordinate x exactly
    grid = np.stack([src[:, 0] / (ww - 1) * 2 - 1, src[:, 1] / (hh - 1) * 2 - 1], axis=-1)
    x = torch.from_numpy(image.astype(np.float32).reshape(hh, ww, -1)).permute(2, 0, 1)[None]
    g = torch.from_numpy(grid.reshape(1, hh, ww, 2).astype(np.float32))
    y = F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = y[0].permute(1, 2, 0).numpy().reshape(image.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jitter_image(image: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    if jitter <= 0:
        return image
    gain, bias = rng.uniform(1 - jitter, 1 + jitter), rng.uniform(-jitter, jitter) * 128
    mean = image.mean()
    out = (image.astype(np.float64) - mean) * gain + mean + bias
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _read_images(root: str) -> tuple[list[str], list[np.ndarray], list[str]]:
    """(ids, uint8 arrays, category per image) of ``demo`` or an image folder."""
    if root == "demo":
        from ..data import load_dataset
        from ..data.datasets import ArrayDataset

        ds = load_dataset("demo", "test")
        assert isinstance(ds, ArrayDataset)  # the bundled demo split is held in memory
        ims = [ds.images[i] for i in range(len(ds))]
        return list(ds.ids), ims, [ds.class_names[y] for y in ds.labels]
    from PIL import Image

    from ..data.datasets import _list_images

    if not os.path.isdir(root):
        raise ProbeError(f"warp:{root}: folder {root} not found (give any folder of images, or "
                         "warp:demo)")
    paths = _list_images(root)
    if not paths:
        raise ProbeError(f"warp:{root}: no image files under {root}")
    ids, ims, cats = [], [], []
    for p in paths:
        with Image.open(p) as im:
            ims.append(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
        rel = os.path.relpath(p, root)
        ids.append(rel)
        cats.append(os.path.dirname(rel) or "image")
    return ids, ims, cats


def load_warp(root: str, options: WarpOptions = WarpOptions()) -> PairSet:
    """Pairs of each image of ``root`` (a folder, or ``demo``) with its warped copy."""
    if options.points < 1:
        raise ProbeError(f"warp: points per pair must be at least 1, not {options.points}")
    if not 0 <= options.shift < 0.5:
        raise ProbeError(f"warp: shift must be in [0, 0.5), not {options.shift}")
    ids, ims, cats = _read_images(root)
    if options.limit is not None:
        ids, ims, cats = ids[:options.limit], ims[:options.limit], cats[:options.limit]
    pairs, images, sizes = [], {}, {}
    for iid, im, cat in zip(ids, ims, cats):
        hh, ww = im.shape[:2]
        rng = _rng(options.seed, iid)
        h = random_homography(ww, hh, options.shift, rng)
        trg = jitter_image(warp_image(im, h), options.jitter, rng)
        src_kps = np.c_[rng.integers(0, ww, options.points),
                        rng.integers(0, hh, options.points)].astype(np.float64)
        trg_kps = apply_homography(h, src_kps)
        inside = ((trg_kps >= 0) & (trg_kps <= [ww - 1, hh - 1])).all(axis=1)
        trg_kps[~inside] = -1.0
        tid = f"{iid}#warp"
        images[iid], images[tid] = im, trg
        sizes[iid] = sizes[tid] = (ww, hh)
        s, t, vis = clean_keypoints(src_kps, trg_kps, (ww, hh), (ww, hh), f"warp:{iid}")
        corners = apply_homography(h, np.array([[0, 0], [ww - 1, 0], [ww - 1, hh - 1],
                                                [0, hh - 1]], dtype=np.float64))
        lo = np.clip(corners.min(axis=0), 0, [ww - 1, hh - 1])
        hi = np.clip(corners.max(axis=0), 0, [ww - 1, hh - 1])
        pairs.append(Pair(iid, tid, s, t, vis, (lo[0], lo[1], hi[0], hi[1]), cat, iid,
                          homography=h))
    spec = f"warp:{root}?{options.describe()}"
    return PairSet(spec, "test", "bbox", pairs, images, sizes, sorted(set(cats)))
