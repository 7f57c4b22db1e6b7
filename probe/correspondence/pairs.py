"""Image pairs with keypoints: SPair-71k, PF-PASCAL and PF-WILLOW in their official layouts.

Every loader returns a :class:`PairSet`: the pairs (source and target image ids, their
keypoints in ORIGINAL pixel coordinates, which are visible, the target's bounding box and
the category) and the images they need, each once.  Coordinates follow the datasets'
convention: ``(x, y)`` with pixel ``(i, j)`` at ``x = j, y = i``, as DIFT indexes its
upsampled maps (``src_ft[0, :, y, x]``).

Layouts (sources in docs/correspond.md):

- ``spair:ROOT`` (SPair-71k): ``ROOT/PairAnnotation/{trn,val,test}/*.json`` with
  ``src_imname, trg_imname, src_kps, trg_kps, trg_bndbox, src_imsize, trg_imsize,
  category``; images ``ROOT/JPEGImages/CATEGORY/NAME``.  The pair list is
  ``ROOT/Layout/large/{split}.txt`` where present (CATs), else every JSON file of the split
  folder (DIFT's eval_spair.py).
- ``pf-pascal:ROOT``: ``ROOT/{split}_pairs.csv`` (source, target, class 1..20, [flip]),
  images ``ROOT/JPEGImages/NAME``, keypoints ``ROOT/Annotations/CLASS/NAME.mat`` (``kps``
  with NaN rows for missing points, ``bbox``).
- ``pf-willow:ROOT``: ``ROOT/test_pairs.csv`` (imageA, imageB, then XA1..10, YA1..10,
  XB1..10, YB1..10); image paths drop their first folder (``PF-dataset/car(G)/x.png`` is
  ``ROOT/car(G)/x.png``), the category is that second folder.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ProbeError

PASCAL_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                  "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
                  "sheep", "sofa", "train", "tvmonitor"]
THRESHOLDS = ("bbox", "img", "kps")


@dataclass(frozen=True, eq=False)
class Pair:
    """One source/target pair; keypoints (K, 2) as (x, y) in original pixels."""
    src: str
    trg: str
    src_kps: np.ndarray
    trg_kps: np.ndarray
    visible: np.ndarray            # (K,) bool: both points annotated and inside the target
    trg_bbox: tuple[float, float, float, float] | None  # x0, y0, x1, y1
    category: str
    name: str = ""
    homography: np.ndarray | None = None  # warp pairs: target = H source (x, y, 1)


@dataclass
class PairSet:
    """Pairs and the images they need.  ``images``: id -> a path or a uint8 array (H, W[, C]);
    ``sizes``: id -> (width, height) of the original image."""
    spec: str
    split: str
    threshold: str                 # the benchmark's PCK threshold: bbox | img | kps
    pairs: list[Pair]
    images: dict[str, Any]
    sizes: dict[str, tuple[int, int]]
    categories: list[str] = field(default_factory=list)

    def image_ids(self) -> list[str]:
        """Every image the pairs need, once, in first-use order."""
        return list(dict.fromkeys(i for p in self.pairs for i in (p.src, p.trg)))


def clean_keypoints(src: Any, trg: Any, src_size: tuple[int, int], trg_size: tuple[int, int],
                    where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoint arrays (K, 2) -> (src, trg, visible).  A point padded with -1 or NaN in either
    image is not visible (kept, so counts stay honest); any other point outside its image
    is an error."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    trg = np.asarray(trg, dtype=np.float64).reshape(-1, 2)
    if src.shape != trg.shape:
        raise ProbeError(f"{where}: {len(src)} source keypoints but {len(trg)} target keypoints")
    padded = (np.isnan(src) | np.isnan(trg) | (src == -1) | (trg == -1)).any(axis=1)
    for name, kps, (w, h) in (("source", src, src_size), ("target", trg, trg_size)):
        ok = (kps[:, 0] >= 0) & (kps[:, 0] <= w) & (kps[:, 1] >= 0) & (kps[:, 1] <= h)
        bad = np.flatnonzero(~ok & ~padded)
        if len(bad):
            x, y = kps[bad[0]]
            raise ProbeError(f"{where}: {name} keypoint {bad[0]} at ({x:g}, {y:g}) lies outside "
                             f"its {w}x{h} image: fix the annotation (or mark it -1)")
    return np.nan_to_num(src, nan=-1.0), np.nan_to_num(trg, nan=-1.0), ~padded


def _need(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise ProbeError(f"{what}: {path} not found")
    return path


def _field(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise ProbeError(f"{where}: missing field {key!r}")
    return obj[key]


def image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        raise ProbeError(f"cannot read image {path}: {e}") from e


# ---- SPair-71k ------------------------------------------------------------------------------
SPAIR_SPLITS = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}


def load_spair(root: str, split: str = "test") -> PairSet:
    what = f"spair:{root}"
    if not os.path.isdir(root):
        raise ProbeError(f"{what}: folder {root} not found (expected the SPair-71k folder with "
                         "JPEGImages/, PairAnnotation/ and Layout/)")
    s = SPAIR_SPLITS.get(split)
    if s is None:
        raise ProbeError(f"{what}: splits are trn, val and test, not {split!r}")
    ann = _need(os.path.join(root, "PairAnnotation", s), what)
    layout = os.path.join(root, "Layout", "large", f"{s}.txt")
    if os.path.exists(layout):
        with open(layout) as fh:
            names = [line.strip() for line in fh if line.strip()]
    else:
        names = sorted(f[:-5] for f in os.listdir(ann) if f.endswith(".json"))
    if not names:
        raise ProbeError(f"{what}: no pairs in {ann}")
    pairs, images, sizes = [], {}, {}
    for name in names:
        path = _need(os.path.join(ann, name + ".json"), what)
        with open(path) as fh:
            try:
                d = json.load(fh)
            except ValueError as e:
                raise ProbeError(f"{path} is not valid JSON: {e}") from e
        cat = str(_field(d, "category", path))
        ids = []
        for side in ("src", "trg"):
            im = str(_field(d, f"{side}_imname", path))
            size = _field(d, f"{side}_imsize", path)
            iid = f"{cat}/{im}"
            images[iid] = _need(os.path.join(root, "JPEGImages", cat, im), what)
            sizes[iid] = (int(size[0]), int(size[1]))  # imsize is [width, height, channels]
            ids.append(iid)
        src, trg, vis = clean_keypoints(_field(d, "src_kps", path), _field(d, "trg_kps", path),
                                        sizes[ids[0]], sizes[ids[1]], path)
        box = tuple(float(v) for v in _field(d, "trg_bndbox", path))
        pairs.append(Pair(ids[0], ids[1], src, trg, vis, box, cat, name))  # type: ignore[arg-type]
    cats = sorted({p.category for p in pairs})
    return PairSet(what, s, "bbox", pairs, images, sizes, cats)


# ---- PF-PASCAL ------------------------------------------------------------------------------
def _read_mat(path: str, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except (OSError, ValueError) as e:
        raise ProbeError(f"cannot read {path}: {e}") from e
    if key not in mat:
        raise ProbeError(f"{path}: missing field {key!r}")
    return np.asarray(mat[key], dtype=np.float64)


def _read_csv(path: str, what: str) -> list[list[str]]:
    with open(_need(path, what), newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if len(rows) < 2:
        raise ProbeError(f"{path}: no pairs (expected a header line and one row per pair)")
    return rows[1:]


def load_pf_pascal(root: str, split: str = "test") -> PairSet:
    what = f"pf-pascal:{root}"
    if not os.path.isdir(root):
        raise ProbeError(f"{what}: folder {root} not found (expected the PF-PASCAL folder with "
                         "JPEGImages/, Annotations/ and {trn,val,test}_pairs.csv)")
    s = SPAIR_SPLITS.get(split, split)
    pairs, images, sizes = [], {}, {}
    for k, row in enumerate(_read_csv(os.path.join(root, f"{s}_pairs.csv"), what)):
        if len(row) < 3:
            raise ProbeError(f"{what}: {s}_pairs.csv row {k + 2} has {len(row)} fields, "
                             "expected source, target, class")
        try:
            cat = PASCAL_CLASSES[int(float(row[2])) - 1]
        except (ValueError, IndexError):
            raise ProbeError(f"{what}: {s}_pairs.csv row {k + 2}: class {row[2]!r} is not "
                             "1..20") from None
        ids, kps = [], []
        for name in row[:2]:
            base = os.path.basename(name)
            images[base] = _need(os.path.join(root, "JPEGImages", base), what)
            sizes[base] = image_size(images[base])
            mat = os.path.join(root, "Annotations", cat, os.path.splitext(base)[0] + ".mat")
            kps.append(_read_mat(_need(mat, what), "kps"))
            ids.append(base)
        box = _read_mat(os.path.join(root, "Annotations", cat,
                                     os.path.splitext(ids[1])[0] + ".mat"), "bbox").ravel()
        src, trg, vis = clean_keypoints(kps[0], kps[1], sizes[ids[0]], sizes[ids[1]],
                                        f"{what} pair {ids[0]}-{ids[1]}")
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        pairs.append(Pair(ids[0], ids[1], src, trg, vis, (x0, y0, x1, y1), cat, f"{k}"))
    return PairSet(what, s, "img", pairs, images, sizes, sorted({p.category for p in pairs}))


# ---- PF-WILLOW ------------------------------------------------------------------------------
def load_pf_willow(root: str, split: str = "test") -> PairSet:
    what = f"pf-willow:{root}"
    if not os.path.isdir(root):
        raise ProbeError(f"{what}: folder {root} not found (expected the PF-WILLOW folder with "
                         "test_pairs.csv and the category folders)")
    if split != "test":
        raise ProbeError(f"{what}: PF-WILLOW has only a test split, not {split!r}")
    pairs, images, sizes = [], {}, {}
    for k, row in enumerate(_read_csv(os.path.join(root, "test_pairs.csv"), what)):
        if len(row) != 42:
            raise ProbeError(f"{what}: test_pairs.csv row {k + 2} has {len(row)} fields, "
                             "expected imageA, imageB and 40 coordinates")
        ids = []
        for name in row[:2]:
            rel = os.path.join(*name.split("/")[1:])
            images[rel] = _need(os.path.join(root, rel), what)
            sizes[rel] = image_size(images[rel])
            ids.append(rel)
        v = np.asarray(row[2:], dtype=np.float64)
        src, trg = v[:20].reshape(2, 10).T, v[20:].reshape(2, 10).T
        src, trg, vis = clean_keypoints(src, trg, sizes[ids[0]], sizes[ids[1]],
                                        f"{what} pair {k}")
        cat = row[0].split("/")[1]
        pairs.append(Pair(ids[0], ids[1], src, trg, vis, None, cat, f"{k}"))
    return PairSet(what, "test", "kps", pairs, images, sizes, sorted({p.category for p in pairs}))
