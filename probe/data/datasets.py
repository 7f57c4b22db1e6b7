"""Datasets read from local disk in each set's official layout; nothing is downloaded.

Every dataset yields ``(image, label)`` with the image as float (C, S, S) in [0, 1],
and has ``ids`` (a stable id per sample: its relative path, or its index in the
official split), ``class_names``, ``spec`` and ``split``.  An image that cannot be
decoded yields ``None`` so the caller can stop or skip (``bad_reason`` says why).
"""
import gzip
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ProbeError
from .transforms import describe, image_transform

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageDataset(torch.utils.data.Dataset):
    """Base: subclasses set ids, labels, class_names and implement ``_load(i) -> PIL/array``."""

    def __init__(self, spec, split, ids, labels, class_names, image_size=None, channels=None,
                 interpolation="bicubic"):
        if len(ids) == 0:
            raise ProbeError(f"dataset {spec!r} split {split!r} has no images")
        self.spec, self.split = spec, split
        self.ids = [str(i) for i in ids]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.image_size, self.channels = image_size, channels
        self.interpolation = interpolation
        self.transform = image_transform(image_size, channels, interpolation)
        self.bad = {}

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        try:
            image = self.transform(self._load(i))
        except Exception as e:  # a corrupt file must not kill the run silently: caller decides
            self.bad[i] = f"{self.ids[i]}: {type(e).__name__}: {e}"
            image = None
        return image, int(self.labels[i])

    def load_batch(self, indices: Sequence[int]) -> list[Any]:
        """``[image or None, ...]`` for ``indices``: what ``self[i][0]`` gives, one by one.
        Subclasses that hold their images in memory transform the batch at once."""
        return [self[i][0] for i in indices]

    def bad_reason(self, i: int) -> str:
        return self.bad.get(i) or f"{self.ids[i]}: could not be decoded"

    def describe_transform(self) -> str:
        return describe(self.image_size, self.channels, self.interpolation)

    def _load(self, i):
        raise NotImplementedError


class ArrayDataset(ImageDataset):
    """uint8 images held in memory, (N, H, W) or (N, H, W, C)."""

    def __init__(self, spec, split, images, labels, class_names, ids=None, **kw):
        self.images = images
        ids = ids if ids is not None else [f"{split}/{i}" for i in range(len(images))]
        super().__init__(spec, split, ids, labels, class_names, **kw)

    def _load(self, i):
        a = self.images[i]
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(a))

    def load_batch(self, indices: Sequence[int]) -> list[Any]:
        # One transform call for the batch: per image it costs ~1 ms, a tenth of a small
        # model's forward pass.  Resize and crop act on each image alone, so the values are
        # those of the one-by-one path (tests/data check it bit for bit).
        a = np.ascontiguousarray(self.images[np.asarray(indices)])
        a = a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)
        return list(self.transform(torch.from_numpy(np.ascontiguousarray(a))))


class FileDataset(ImageDataset):
    """Image files on disk; ids are paths relative to the dataset root."""

    official_split: str  # set by the loaders of datasets with official splits (finegrained)

    def __init__(self, spec, split, root, paths, labels, class_names, **kw):
        self.root = root
        super().__init__(spec, split, [os.path.relpath(p, root) for p in paths], labels,
                         class_names, **kw)
        self.paths = list(paths)

    def _load(self, i: int) -> Image.Image:
        im: Image.Image = Image.open(self.paths[i])
        try:
            im.load()  # decodes and closes the file (Pillow does for a path it opened)
        except BaseException:
            im.close()
            raise
        if getattr(im, "fp", None) is not None:  # formats with frames keep it open to seek
            with im:
                im = im.copy()
        # no copy otherwise: `with Image.open` would free the pixels on exit, hence one before
        return im if im.mode in ("L", "RGB") else im.convert("RGB")


# ---- Fashion-MNIST (IDX files) and the bundled demo subset -----------------------------
def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) -> numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise ProbeError(f"cannot read {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ProbeError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ProbeError(f"{path} is truncated: its IDX header is incomplete")
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ProbeError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape).copy()  # frombuffer is read-only; torch wants writable


def fashion_mnist(root: str | None, split: str, **kw: Any) -> ArrayDataset:
    root = root or FASHION_MNIST_ROOT
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ProbeError(f"fashion-mnist has splits train and test, not {split!r}")
    files = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [os.path.join(root, f"{prefix}-{kind}{ext}") for ext in (".gz", "")]
        found = [c for c in cands if os.path.exists(c)]
        if not found:
            hint = (" (install it with `apt-get install dataset-fashion-mnist`)"
                    if root == FASHION_MNIST_ROOT else "")
            raise ProbeError(f"fashion-mnist: {cands[0]} not found; ROOT must hold "
                             f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz{hint}")
        files.append(found[0])
    images, labels = read_idx(files[0]), read_idx(files[1])
    if len(images) != len(labels):
        raise ProbeError(f"fashion-mnist {split}: {len(images)} images but {len(labels)} labels")
    return ArrayDataset(f"fashion-mnist:{root}", split, images, labels, FASHION_MNIST_CLASSES, **kw)


def demo(split: str, **kw: Any) -> ArrayDataset:
    """The bundled demo set: a balanced subset of real Fashion-MNIST (see data/demo/README)."""
    if split not in ("train", "test"):
        raise ProbeError(f"demo has splits train and test, not {split!r}")
    with resources.files("probe.data").joinpath("demo/fashion_mnist_demo.npz").open("rb") as fh:
        z = np.load(fh)
        images, labels, index = z[f"{split}_images"], z[f"{split}_labels"], z[f"{split}_index"]
    return ArrayDataset("demo", split, images, labels, FASHION_MNIST_CLASSES,
                        ids=[f"{split}/{i}" for i in index], **kw)


# ---- image folders ------------------------------------------------------------------------
def _list_images(folder):
    out = []
    for dirpath, _, files in os.walk(folder, followlinks=True):
        out += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(out)


FOLDER_SPLITS = ("train", "val", "test")


def imagefolder(root: str, split: str, keep: Any = None, spec: str | None = None,
                **kw: Any) -> FileDataset:
    """ROOT/CLASS/IMAGE, or ROOT/SPLIT/CLASS/IMAGE when ROOT has a folder for the split.
    ``keep``: an ordered list of class folder names to use (others are ignored)."""
    spec = spec or f"imagefolder:{root}"
    if not os.path.isdir(root):
        raise ProbeError(f"{spec}: folder {root} not found (expected ROOT/CLASS/IMAGE files, or "
                         "ROOT/train/CLASS/IMAGE and ROOT/test/CLASS/IMAGE)")
    splits = [s for s in FOLDER_SPLITS if os.path.isdir(os.path.join(root, s))]
    if splits and split not in splits:
        raise ProbeError(f"{spec}: no {split}/ folder in {root}, which has "
                         f"{', '.join(s + '/' for s in splits)}: choose --split "
                         f"{' or '.join(splits)}")
    # a flat ROOT/CLASS tree has no splits: every --split reads the same images, which
    # `probe fit` flags when a train and a test file share ids
    base = os.path.join(root, split) if splits else root
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    if keep is not None:
        classes = [c for c in keep if c in set(classes)]
    if not classes:
        raise ProbeError(f"{spec}: no class folders in {base} (expected ROOT/CLASS/IMAGE files)")
    paths, labels = [], []
    for k, c in enumerate(classes):
        found = _list_images(os.path.join(base, c))
        paths += found
        labels += [k] * len(found)
    if not paths:
        raise ProbeError(f"{spec}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {base}")
    return FileDataset(spec, split, root, paths, labels, classes, **kw)


def imagenet50_classes() -> tuple[list[str], list[str]]:
    text = resources.files("probe.data").joinpath("imagenet50.txt").read_text()
    rows = [line.split(maxsplit=1) for line in text.splitlines() if line.strip()]
    return [r[0] for r in rows], [r[1] if len(r) > 1 else r[0] for r in rows]


def imagenet50(root: str, split: str, **kw: Any) -> FileDataset:
    """An ImageNet tree (ROOT/train/WNID/*.JPEG, ROOT/val/WNID/*.JPEG) filtered to the
    50 classes of the standard ImageNet-50 list."""
    split = {"test": "val"}.get(split, split)
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise ProbeError(f"imagenet50: {folder} not found; ROOT must hold train/WNID/ and "
                         "val/WNID/ folders (val sorted into class folders)")
    wnids, names = imagenet50_classes()
    missing = [w for w in wnids if not os.path.isdir(os.path.join(folder, w))]
    if missing:
        raise ProbeError(f"imagenet50: {len(missing)} of the 50 class folders are missing in "
                         f"{folder} (first: {', '.join(missing[:3])})")
    ds = imagefolder(root, split, keep=wnids, spec=f"imagenet50:{root}", **kw)
    ds.class_names = [f"{w} {n}" for w, n in zip(wnids, names)]
    return ds
