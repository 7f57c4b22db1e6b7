"""Datasets with per-pixel label maps (masks), read from local disk in official layouts.

A segmentation dataset is an image dataset (:mod:`.datasets`) that also has
``mask_class_names``, ``ignore_index`` and ``load_masks(indices)``: uint8 label maps,
one per image, at ``mask_size`` (the side the images are resized and cropped to).

Alignment: the image goes through the model's transform (resize the shorter side to S,
centre-crop S; :mod:`.transforms`); its mask goes through the same resize and crop with
nearest-neighbour sampling (``NEAREST_EXACT``: pixel centres, as PIL's NEAREST), so mask
pixel (i, j) covers image pixel (i, j).  Without a size (``image_size=None``) both keep
the stored size.

Layouts (see docs/segment.md):

- ``fashion-mnist-seg[:ROOT]`` / ``demo-seg``: real Fashion-MNIST images; every pixel of
  the item is labelled with the item's class (0-9, the classification labels), every
  other pixel is ``background`` (10).  A pixel is the item's when its value is at least
  :data:`FMNIST_THRESHOLD` (26/255, a tenth of full scale) in the stored 28x28 image.
- ``voc2012:ROOT``: PASCAL VOC 2012 (``JPEGImages``, palette PNGs in
  ``SegmentationClass``, ``ImageSets/Segmentation/{train,val}.txt``); 21 classes, 255
  (the object borders) ignored.  ROOT is ``VOC2012`` or a folder holding
  ``VOCdevkit/VOC2012``.
- ``ade20k:ROOT``: ``ADEChallengeData2016/images/{training,validation}`` and
  ``annotations/{training,validation}``; 150 classes: 0 ("other") is ignored and the
  rest shift down by one (mmsegmentation's ``reduce_zero_label``).
- ``segfolder:ROOT``: ``ROOT/images/[SPLIT/]NAME.EXT``, ``ROOT/masks/[SPLIT/]NAME.png``
  (class index per pixel) and ``ROOT/classes.txt`` (one name per line, in index order);
  255 is ignored.

Layouts without an image-level class (VOC, ADE20K, segfolder) give every image label 0
and ``class_names == ["image"]``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ProbeError
from .datasets import (FASHION_MNIST_CLASSES, IMAGE_EXTENSIONS, ArrayDataset, FileDataset,
                       demo, fashion_mnist)

FMNIST_THRESHOLD = 26  # of 255: a pixel this bright or brighter is the item's
FMNIST_BACKGROUND = 10
IGNORE = 255
NO_IMAGE_CLASS = ["image"]
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
SEG_SPECS = {
    "fashion-mnist-seg": "Fashion-MNIST with masks: item pixels (>= 26/255) labelled with the "
                         "item's class, background class 10",
    "demo-seg": "the bundled demo subset with the fashion-mnist-seg masks",
    "voc2012": "PASCAL VOC 2012 segmentation (JPEGImages, SegmentationClass, ImageSets)",
    "ade20k": "ADE20K SceneParsing (ADEChallengeData2016/images, annotations)",
    "segfolder": "ROOT/images/[SPLIT/]NAME, ROOT/masks/[SPLIT/]NAME.png, ROOT/classes.txt",
}


def mask_transform(size: int | None) -> Callable[[Any], Any]:
    """The image transform's geometry for a label map: resize the shorter side to ``size``
    by nearest neighbour, centre-crop ``size`` (identity when ``size`` is None)."""
    from torchvision.transforms import v2 as T

    if size is None:
        return lambda m: m
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.NEAREST_EXACT,
                               antialias=False), T.CenterCrop(size)])


class MaskMixin:
    """What a dataset with masks adds: ``mask_class_names``, ``ignore_index``,
    ``mask_size``, ``describe_masks()`` and ``load_masks(indices)``."""

    mask_class_names: list[str]
    ignore_index: int = IGNORE
    mask_source: str = ""
    image_size: int | None

    def _init_masks(self, class_names, ignore_index, source):
        self.mask_class_names, self.ignore_index = list(class_names), int(ignore_index)
        self.mask_source = source
        self._mask_tf = mask_transform(self.image_size)

    @property
    def mask_size(self) -> int | None:
        return self.image_size

    def describe_masks(self) -> str:
        size = self.image_size
        geometry = ("stored size" if size is None else
                    f"resize shorter side to {size} (nearest, pixel centres), center crop {size}")
        return f"{self.mask_source}; {geometry}; {self.ignore_index} ignored"

    def load_masks(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 (n, S, S) label maps of images ``indices``, aligned with their images."""
        out = [self._mask_tf(torch.from_numpy(np.ascontiguousarray(self._raw_mask(int(i))))[None])[0]
               for i in indices]
        return np.stack([m.numpy() for m in out]).astype(np.uint8) if out else \
            np.zeros((0, 0, 0), np.uint8)

    def _raw_mask(self, i: int) -> np.ndarray:
        raise NotImplementedError


# ---- Fashion-MNIST with masks --------------------------------------------------------------
def fmnist_masks(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label maps of Fashion-MNIST images: the item's class where the pixel is at least
    :data:`FMNIST_THRESHOLD`, background (10) elsewhere."""
    item = np.asarray(images) >= FMNIST_THRESHOLD
    return np.where(item, np.asarray(labels, np.uint8).reshape(-1, 1, 1),
                    np.uint8(FMNIST_BACKGROUND)).astype(np.uint8)


class FashionMNISTSeg(MaskMixin, ArrayDataset):
    def __init__(self, base: ArrayDataset, spec: str):
        self.__dict__.update(base.__dict__)
        self.spec = spec
        self._init_masks(FASHION_MNIST_CLASSES + ["background"], IGNORE,
                         f"item pixels >= {FMNIST_THRESHOLD}/255 of the 28x28 image labelled "
                         f"with the item's class, the rest background ({FMNIST_BACKGROUND})")

    def _raw_mask(self, i):
        return fmnist_masks(self.images[i], self.labels[i])

    def load_masks(self, indices: Sequence[int]) -> np.ndarray:
        # the whole batch through one transform call (resize and crop act per image)
        idx = np.asarray(indices, dtype=np.int64)
        raw = torch.from_numpy(fmnist_masks(self.images[idx], self.labels[idx]))
        return self._mask_tf(raw).numpy().astype(np.uint8)


def fashion_mnist_seg(root: str | None, split: str, **kw: Any) -> FashionMNISTSeg:
    base = fashion_mnist(root, split, **kw)
    return FashionMNISTSeg(base, "fashion-mnist-seg" + (f":{root}" if root else ""))


def demo_seg(split: str, **kw: Any) -> FashionMNISTSeg:
    return FashionMNISTSeg(demo(split, **kw), "demo-seg")


# ---- file layouts --------------------------------------------------------------------------
class FileSegDataset(MaskMixin, FileDataset):
    """Images on disk with one mask file each; ``label_map`` maps stored values (256 of
    them) to class indices or the ignore value."""

    def __init__(self, spec, split, root, paths, mask_paths, class_names, *, ignore_index,
                 source, label_map=None, **kw):
        super().__init__(spec, split, root, paths, np.zeros(len(paths), np.int64),
                         NO_IMAGE_CLASS, **kw)
        self.mask_paths = list(mask_paths)
        self.label_map = label_map
        self._init_masks(class_names, ignore_index, source)

    def _raw_mask(self, i):
        with Image.open(self.mask_paths[i]) as im:
            # palette PNGs (VOC) hold class indices; 'P' and 'L' read as those indices
            if im.mode not in ("P", "L"):
                raise ProbeError(f"{self.mask_paths[i]}: a mask must be a single-channel or "
                                 f"palette PNG of class indices, not mode {im.mode}")
            m = np.array(im, dtype=np.uint8)
        return m if self.label_map is None else self.label_map[m]


def _need(path, what, spec):
    if not os.path.exists(path):
        raise ProbeError(f"{spec}: {path} not found ({what})")
    return path


def voc2012(root: str, split: str, **kw: Any) -> FileSegDataset:
    spec = f"voc2012:{root}"
    base = root
    for sub in ("VOCdevkit/VOC2012", "VOC2012"):
        if os.path.isdir(os.path.join(root, sub, "JPEGImages")):
            base = os.path.join(root, sub)
    split = {"test": "val"}.get(split, split)
    if split not in ("train", "val", "trainval"):
        raise ProbeError(f"voc2012 has splits train, val (also read as test) and trainval, "
                         f"not {split!r}")
    lst = _need(os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt"),
                "ROOT must be VOC2012/ or hold VOCdevkit/VOC2012/", spec)
    with open(lst) as fh:
        names = [line.split()[0] for line in fh if line.strip()]
    images = [os.path.join(base, "JPEGImages", f"{n}.jpg") for n in names]
    masks = [os.path.join(base, "SegmentationClass", f"{n}.png") for n in names]
    missing = [p for p in images + masks if not os.path.exists(p)]
    if missing:
        raise ProbeError(f"{spec}: {len(missing)} files of {split}.txt are missing "
                         f"(first: {missing[0]})")
    return FileSegDataset(spec, split, base, images, masks, VOC_CLASSES, ignore_index=IGNORE,
                          source="SegmentationClass palette indices (255: object borders)", **kw)


def _ade_names(base):
    """The 150 class names from objectInfo150.txt/.csv when present, else class1..class150."""
    for name in ("objectInfo150.txt",):
        path = os.path.join(base, name)
        if os.path.exists(path):
            rows = [line.rstrip("\n").split("\t")
                    for line in open(path)][1:]
            # the first of the synonyms ("building;edifice" or "building, edifice"), as mmseg names them
            names = [r[-1].strip('"').replace(";", ",").split(",")[0].strip()
                     for r in rows if len(r) > 1]
            if len(names) == 150:
                return names
    return [f"class{k}" for k in range(1, 151)]


def ade20k(root: str, split: str, **kw: Any) -> FileSegDataset:
    spec = f"ade20k:{root}"
    base = root if os.path.isdir(os.path.join(root, "images")) else \
        os.path.join(root, "ADEChallengeData2016")
    folder = {"train": "training", "val": "validation", "test": "validation"}.get(split)
    if folder is None:
        raise ProbeError(f"ade20k has splits train and val (also read as test), not {split!r}")
    img_dir = _need(os.path.join(base, "images", folder),
                    "ROOT must hold ADEChallengeData2016/images/ and annotations/", spec)
    images = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir)
                    if f.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise ProbeError(f"{spec}: no images in {img_dir}")
    masks = [os.path.join(base, "annotations", folder,
                          os.path.splitext(os.path.basename(p))[0] + ".png") for p in images]
    missing = [p for p in masks if not os.path.exists(p)]
    if missing:
        raise ProbeError(f"{spec}: {len(missing)} annotations are missing (first: {missing[0]})")
    # 0 is "other objects": ignored; 1..150 -> 0..149
    label_map = np.arange(256, dtype=np.int64) - 1
    label_map[0] = IGNORE
    label_map[label_map > 149] = IGNORE
    return FileSegDataset(spec, split, base, images, masks, _ade_names(base),
                          ignore_index=IGNORE, label_map=label_map.astype(np.uint8),
                          source="ADE20K annotations, 0 ignored, 1..150 shifted to 0..149", **kw)


def segfolder(root: str, split: str, **kw: Any) -> FileSegDataset:
    spec = f"segfolder:{root}"
    classes_txt = _need(os.path.join(root, "classes.txt"),
                        "one class name per line, in index order", spec)
    with open(classes_txt) as fh:
        names = [line.strip() for line in fh if line.strip()]
    img_base, mask_base = os.path.join(root, "images"), os.path.join(root, "masks")
    _need(img_base, "ROOT/images/ with the images", spec)
    _need(mask_base, "ROOT/masks/ with one NAME.png per image", spec)
    if os.path.isdir(os.path.join(img_base, split)):
        img_base, mask_base = os.path.join(img_base, split), os.path.join(mask_base, split)
    elif any(os.path.isdir(os.path.join(img_base, s)) for s in ("train", "val", "test")):
        raise ProbeError(f"{spec}: no images/{split}/ folder: choose a --split that exists")
    images = sorted(os.path.join(img_base, f) for f in os.listdir(img_base)
                    if f.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise ProbeError(f"{spec}: no image files in {img_base}")
    masks = [os.path.join(mask_base, os.path.splitext(os.path.basename(p))[0] + ".png")
             for p in images]
    missing = [p for p in masks if not os.path.exists(p)]
    if missing:
        raise ProbeError(f"{spec}: {len(missing)} masks are missing (first: {missing[0]})")
    return FileSegDataset(spec, split, root, images, masks, names, ignore_index=IGNORE,
                          source="class index per pixel (masks/NAME.png)", **kw)


def load(name: str, root: Any, split: str, **kw: Any) -> FashionMNISTSeg | FileSegDataset:
    """A segmentation dataset by spec name (see :data:`SEG_SPECS`)."""
    if name == "fashion-mnist-seg":
        return fashion_mnist_seg(root, split, **kw)
    if name == "demo-seg":
        return demo_seg(split, **kw)
    return {"voc2012": voc2012, "ade20k": ade20k, "segfolder": segfolder}[name](root, split, **kw)


def has_masks(data: Any) -> bool:
    return callable(getattr(data, "load_masks", None))


def copy_masks(f: Any, data: Any, rows: np.ndarray, batch: int = 1024) -> None:
    """Write the masks of dataset indices ``rows`` (the file's rows, in order) into the
    open feature file ``f``, ``batch`` masks at a time."""
    from ..store import create_masks

    size = data.mask_size
    if size is None:
        size = data.load_masks(rows[:1]).shape[-1] if len(rows) else 0
    ds = create_masks(f, len(rows), size, data.mask_class_names, data.ignore_index,
                      data.describe_masks())
    for a in range(0, len(rows), batch):
        m = data.load_masks(rows[a:a + batch])
        if m.shape[1:] != (size, size):
            raise ProbeError(f"{data.spec}: masks of {m.shape[1]}x{m.shape[2]} pixels where "
                             f"{size}x{size} were expected: give the images one size "
                             "(the model's transform resizes them; --image-size)")
        ds[a:a + len(m)] = m
