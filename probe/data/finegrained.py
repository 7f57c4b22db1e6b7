"""Fine-grained classification sets, read from their official on-disk layouts.

torchvision already knows where each set keeps its files and how its official splits
are defined, so we use it (never downloading): we map probe's ``--split`` onto the
official split, check the files torchvision will read are there (so a missing one is
named, not reported as "Dataset not found or corrupted"), and turn torchvision's file
list into a :class:`~probe.data.datasets.FileDataset`.  CUB-200-2011 has no
torchvision class, so it gets a small parser of its own.

ROOT may be the folder torchvision expects (the one holding ``food-101/``) or the
dataset folder itself (``.../food-101``); ids are paths relative to the dataset
folder, so they are the same either way.
"""
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from torchvision import datasets as tvd

from ..errors import ProbeError
from .datasets import FileDataset


class _Flowers102(tvd.Flowers102):
    # torchvision checks the md5 of the two .mat files even without download=True, which
    # rejects a re-saved or subset copy; existence is enough, the contents are checked below.
    def _check_integrity(self):
        return self._images_folder.is_dir() and all(
            (self._base_folder / f).is_file() for f in ("imagelabels.mat", "setid.mat"))


@dataclass(frozen=True)
class _Set:
    folder: str                 # the dataset folder under torchvision's root
    splits: dict                # probe split -> official split
    official: tuple             # official split names, also accepted as they are
    needs: Callable             # official split -> paths under `folder` torchvision reads
    layout: str                 # one-line description of the expected tree, for errors
    make: Callable              # (torchvision root, official split) -> torchvision dataset
    files: Callable             # torchvision dataset -> (paths, labels)


def _files(ds):
    return ds._image_files, ds._labels


SETS = {
    "flowers102": _Set(
        "flowers-102", {"train": "train", "val": "val", "test": "test"}, ("train", "val", "test"),
        lambda s: ["jpg/", "imagelabels.mat", "setid.mat"],
        "ROOT/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}",
        lambda r, s: _Flowers102(r, split=s), _files),
    "fgvc-aircraft": _Set(
        "fgvc-aircraft-2013b", {"train": "train", "val": "val", "test": "test"},
        ("train", "val", "trainval", "test"),
        lambda s: ["data/images/", "data/variants.txt", f"data/images_variant_{s}.txt"],
        "ROOT/fgvc-aircraft-2013b/data/{images/ID.jpg, variants.txt, images_variant_SPLIT.txt}",
        lambda r, s: tvd.FGVCAircraft(r, split=s, annotation_level="variant"), _files),
    "stanford-cars": _Set(
        "stanford_cars", {"train": "train", "test": "test"}, ("train", "test"),
        lambda s: (["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train/"]
                   if s == "train" else
                   ["devkit/cars_meta.mat", "cars_test_annos_withlabels.mat", "cars_test/"]),
        "ROOT/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/, "
        "cars_test_annos_withlabels.mat, cars_test/}",
        lambda r, s: tvd.StanfordCars(r, split=s),
        lambda ds: ([p for p, _ in ds._samples], [y for _, y in ds._samples])),
    "oxford-pets": _Set(
        "oxford-iiit-pet", {"train": "trainval", "test": "test"}, ("trainval", "test"),
        lambda s: ["images/", f"annotations/{s}.txt"],
        "ROOT/oxford-iiit-pet/{images/NAME.jpg, annotations/trainval.txt, annotations/test.txt}",
        lambda r, s: tvd.OxfordIIITPet(r, split=s, target_types="category"),
        lambda ds: (ds._images, ds._labels)),
    "food101": _Set(
        "food-101", {"train": "train", "test": "test"}, ("train", "test"),
        lambda s: ["images/", f"meta/{s}.json"],
        "ROOT/food-101/{images/CLASS/ID.jpg, meta/train.json, meta/test.json}",
        lambda r, s: tvd.Food101(r, split=s), _files),
    "dtd": _Set(
        "dtd/dtd", {"train": "train", "val": "val", "test": "test"}, ("train", "val", "test"),
        lambda s: ["images/", f"labels/{s}1.txt"],
        "ROOT/dtd/dtd/{images/CLASS/NAME.jpg, labels/train1.txt, labels/val1.txt, labels/test1.txt}",
        lambda r, s: tvd.DTD(r, split=s, partition=1), _files),
}


def load(name: str, root: str, split: str, **kw: Any) -> FileDataset:
    """``--data NAME:ROOT`` for the fine-grained sets -> FileDataset of the mapped split."""
    if not root or not os.path.isdir(root):
        layout = CUB_LAYOUT if name == "cub200" else "expected " + SETS[name].layout
        raise ProbeError(f"{name}: folder {root} not found; {layout}")
    if name == "cub200":
        return cub200(root, split, **kw)
    s = SETS[name]
    official = _official_split(name, split, s.splits, s.official)
    tv_root = _torchvision_root(root, s.folder)
    base = os.path.join(tv_root, s.folder)
    if not os.path.isdir(base):
        raise ProbeError(f"{name}: no {s.folder}/ folder in {root}; expected {s.layout}")
    missing = [p for p in s.needs(official) if not _exists(os.path.join(base, p))]
    if missing:
        raise ProbeError(f"{name}: {', '.join(missing)} not found in {base}; expected {s.layout}")
    try:
        ds = s.make(tv_root, official)
    except (RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        # a file that is there but malformed (torchvision's own messages are multi-line or vague)
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise ProbeError(f"{name}: cannot read the {official!r} split in {base} ({why}); "
                         f"expected {s.layout}") from e
    paths, labels = s.files(ds)
    classes = list(ds.classes)
    out = [y for y in labels if not 0 <= y < len(classes)]
    if out:
        raise ProbeError(f"{name}: the {official!r} annotations in {base} give class index "
                         f"{out[0]} but there are {len(classes)} classes")
    dataset = FileDataset(f"{name}:{root}", split, base, [str(p) for p in paths], labels,
                          classes, **kw)
    dataset.official_split = official
    return dataset


def _official_split(name, split, mapping, official):
    if split in mapping:
        return mapping[split]
    if split in official:
        return split
    extra = [o for o in official if o not in mapping.values()]
    hint = f" (or the official {', '.join(extra)})" if extra else ""
    raise ProbeError(f"{name} has no {split!r} split; use {' or '.join(mapping)}{hint}")


def _torchvision_root(root, folder):
    """ROOT itself, or the ancestor of ROOT when ROOT already is (part of) ``folder``."""
    root = os.path.abspath(root)
    parts, here = folder.split("/"), root.split(os.sep)
    candidates = [root] + [os.sep.join(here[:-k]) or os.sep for k in range(1, len(parts) + 1)
                           if here[-k:] == parts[:k]]
    return next((c for c in candidates if os.path.isdir(os.path.join(c, folder))), root)


def _exists(path):
    return os.path.isdir(path) if path.endswith("/") else os.path.isfile(path)


# ---- CUB-200-2011 ---------------------------------------------------------------------
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
CUB_LAYOUT = ("ROOT = the CUB_200_2011 folder (or its parent) holding images.txt, "
              "image_class_labels.txt, train_test_split.txt, classes.txt and images/")


def cub200(root: str, split: str, **kw: Any) -> FileDataset:
    """CUB-200-2011 from its own index files; train/test from train_test_split.txt."""
    flag = {"train": "1", "test": "0"}.get(split)
    if flag is None:
        raise ProbeError(f"cub200 has no {split!r} split; use train or test")
    nested = os.path.join(root, "CUB_200_2011")
    base = nested if (not os.path.isfile(os.path.join(root, "images.txt"))
                      and os.path.isfile(os.path.join(nested, "images.txt"))) else root
    missing = [f for f in CUB_FILES + ("images/",) if not _exists(os.path.join(base, f))]
    if missing:
        raise ProbeError(f"cub200: {', '.join(missing)} not found in {base}; {CUB_LAYOUT}")
    images, labels, is_train, classes = (_read_table(os.path.join(base, f)) for f in CUB_FILES)
    class_ids = sorted(int(c) for c in classes)
    index = {c: k for k, c in enumerate(class_ids)}
    paths, ys = [], []
    for i in sorted(images, key=int):
        for table, f in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if i not in table:
                raise ProbeError(f"cub200: image {i} of images.txt has no line in {f}")
        if is_train[i] not in ("0", "1"):
            raise ProbeError(f"cub200: train_test_split.txt gives {is_train[i]!r} for image {i}; "
                             "expected 1 (train) or 0 (test)")
        if is_train[i] == flag:
            if not labels[i].isdigit() or int(labels[i]) not in index:
                raise ProbeError(f"cub200: image {i} has class {labels[i]}, "
                                 "which classes.txt does not list")
            paths.append(os.path.join(base, "images", images[i]))
            ys.append(index[int(labels[i])])
    names = [_cub_name(classes[str(c)]) for c in class_ids]
    dataset = FileDataset(f"cub200:{root}", split, base, paths, ys, names, **kw)
    dataset.official_split = split
    return dataset


def _read_table(path):
    """CUB index file of 'ID VALUE' lines -> {ID: VALUE} (strings)."""
    rows = {}
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            key, _, value = line.strip().partition(" ")
            if not line.strip():
                continue
            if not key.isdigit() or not value.strip():
                raise ProbeError(f"cub200: {path} line {n} is {line.strip()!r}; expected 'ID VALUE'")
            rows[str(int(key))] = value.strip()
    return rows


def _cub_name(folder):
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    return re.sub(r"^\d+\.", "", folder).replace("_", " ")
