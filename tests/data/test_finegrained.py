"""Fine-grained datasets: tiny trees in each set's official layout, loaded by spec.

Every tree is written here, so the expected ids, class names and pixel colours come
from the test, not from the loader.  Each image is one solid colour, so the mean of
the loaded tensor tells us the loader opened the file its id names.
"""
import json
import os
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from probe.data import load_dataset
from probe.errors import ProbeError
from tolerances import JPEG_SOLID_COLOUR, assert_close


@dataclass
class Tree:
    root: str          # what the user passes as ROOT
    folder: str        # the dataset folder (ids are relative to it)
    needed: dict       # probe split -> an annotation file that split needs (relative to folder)
    expect: dict = field(default_factory=dict)   # probe split -> {id: (class name, rgb)}
    _n: int = 0

    def image(self, rel, split_names, class_name, gray=False):
        """Write one solid-colour image at folder/rel and expect it in each of split_names."""
        self._n += 1
        k = self._n
        rgb = ((40 * k) % 256, (90 * k + 60) % 256, (150 + 70 * k) % 256)
        path = os.path.join(self.folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if gray:
            rgb = (rgb[0],) * 3
            Image.new("L", (28, 20), rgb[0]).save(path)
        else:
            # the official sets are JPEGs; a PNG behind a .jpg name also occurs in the wild
            Image.new("RGB", (20, 28), rgb).save(path, format="JPEG" if k % 2 else "PNG")
        for s in split_names:
            self.expect.setdefault(s, {})[rel] = (class_name, rgb)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


# ---- one builder per dataset, each in the layout torchvision (or CUB itself) documents ----
def flowers102(tmp):
    t = Tree(str(tmp), str(tmp / "flowers-102"), {s: "setid.mat" for s in ("train", "val", "test")})
    # official class names of Flowers-102 labels 1, 3, 5, 77, 102
    names = {1: "pink primrose", 3: "canterbury bells", 5: "english marigold",
             77: "passion flower", 102: "blackberry lily"}
    labels = [5, 1, 102, 77, 3, 1, 102, 5]
    split_ids = {"train": [2, 8, 5], "val": [1, 7], "test": [3, 4, 6]}
    for image_id, label in enumerate(labels, 1):
        split = next(s for s, ids in split_ids.items() if image_id in ids)
        t.image(f"jpg/image_{image_id:05d}.jpg", [split], names[label], gray=image_id == 4)
    sio.savemat(os.path.join(t.folder, "imagelabels.mat"), {"labels": np.array([labels])})
    sio.savemat(os.path.join(t.folder, "setid.mat"),
                {"trnid": np.array([split_ids["train"]]), "valid": np.array([split_ids["val"]]),
                 "tstid": np.array([split_ids["test"]])})
    return t


def fgvc_aircraft(tmp):
    data = "data/images_variant_{}.txt"
    t = Tree(str(tmp), str(tmp / "fgvc-aircraft-2013b"),
             {s: data.format(s) for s in ("train", "val", "test", "trainval")})
    variants = ["707-320", "Cessna 172", "F-16A/B"]   # names with spaces and slashes occur
    rows = {"train": [("0034309", "F-16A/B"), ("1025794", "707-320"), ("0056978", "Cessna 172")],
            "val": [("0062765", "Cessna 172"), ("0034958", "707-320")],
            "test": [("1514522", "F-16A/B"), ("0823120", "707-320")]}
    rows["trainval"] = rows["train"] + rows["val"]
    _write(os.path.join(t.folder, "data/variants.txt"), "".join(v + "\n" for v in variants))
    for split in ("train", "val", "test"):
        for image, variant in rows[split]:
            t.image(f"data/images/{image}.jpg", [split, "trainval"] if split != "test" else [split],
                    variant)
    for split, r in rows.items():
        _write(os.path.join(t.folder, data.format(split)), "".join(f"{i} {v}\n" for i, v in r))
    return t


def stanford_cars(tmp):
    t = Tree(str(tmp), str(tmp / "stanford_cars"),
             {"train": "devkit/cars_train_annos.mat", "test": "cars_test_annos_withlabels.mat"})
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    rows = {"train": [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 2)],
            "test": [("00001.jpg", 2), ("00002.jpg", 2), ("00003.jpg", 1)]}
    os.makedirs(os.path.join(t.folder, "devkit"))
    sio.savemat(os.path.join(t.folder, "devkit/cars_meta.mat"),
                {"class_names": np.array(names, dtype=object)})
    for split, mat in (("train", "devkit/cars_train_annos.mat"),
                       ("test", "cars_test_annos_withlabels.mat")):
        for fname, cls in rows[split]:
            t.image(f"cars_{split}/{fname}", [split], names[cls - 1])
        annos = np.array([(5, 6, 15, 18, cls, fname) for fname, cls in rows[split]],
                         dtype=[(k, object) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2",
                                                      "class", "fname")])
        sio.savemat(os.path.join(t.folder, mat), {"annotations": annos})
    return t


def oxford_pets(tmp):
    t = Tree(str(tmp), str(tmp / "oxford-iiit-pet"),
             {"train": "annotations/trainval.txt", "test": "annotations/test.txt"})
    # CLASS-ID SPECIES(1 cat, 2 dog) BREED-ID; cat images are capitalised, dog images not
    breeds = {"Abyssinian": (1, 1, 1, "Abyssinian"),
              "american_bulldog": (2, 2, 1, "American Bulldog"),
              "american_pit_bull_terrier": (3, 2, 2, "American Pit Bull Terrier")}
    rows = {"trainval": ["american_bulldog_10", "Abyssinian_100", "american_pit_bull_terrier_1",
                         "Abyssinian_101"],
            "test": ["Abyssinian_1", "american_pit_bull_terrier_12", "american_bulldog_2"]}
    for split, images in rows.items():
        lines = []
        for image in images:
            cls, species, breed, name = breeds[image.rsplit("_", 1)[0]]
            lines.append(f"{image} {cls} {species} {breed}\n")
            t.image(f"images/{image}.jpg", [{"trainval": "train"}.get(split, split), split], name)
        _write(os.path.join(t.folder, f"annotations/{split}.txt"), "".join(lines))
    return t


def food101(tmp):
    t = Tree(str(tmp), str(tmp / "food-101"), {s: f"meta/{s}.json" for s in ("train", "test")})
    # keys deliberately not in sorted order: class indices follow sorted class names
    meta = {"train": {"baby_back_ribs": ["baby_back_ribs/2432", "baby_back_ribs/17"],
                      "apple_pie": ["apple_pie/1005649"]},
            "test": {"baby_back_ribs": ["baby_back_ribs/9"],
                     "apple_pie": ["apple_pie/38795", "apple_pie/1011328"]}}
    for split, classes in meta.items():
        for name, images in classes.items():
            for image in images:
                t.image(f"images/{image}.jpg", [split], name)
        _write(os.path.join(t.folder, f"meta/{split}.json"), json.dumps(classes))
    return t


def dtd(tmp):
    t = Tree(str(tmp), str(tmp / "dtd" / "dtd"), {s: f"labels/{s}1.txt" for s in ("train", "val", "test")})
    rows = {"train": ["zigzagged/zigzagged_0012.jpg", "banded/banded_0002.jpg"],
            "val": ["banded/banded_0004.jpg", "zigzagged/zigzagged_0020.jpg"],
            "test": ["zigzagged/zigzagged_0031.jpg", "banded/banded_0099.jpg",
                     "banded/banded_0100.jpg"]}
    for split, images in rows.items():
        for image in images:
            t.image(f"images/{image}", [split], image.split("/")[0])
        _write(os.path.join(t.folder, f"labels/{split}1.txt"), "".join(i + "\n" for i in images))
    # partition 2 swaps train and test: it must not be what we read
    _write(os.path.join(t.folder, "labels/train2.txt"), "".join(i + "\n" for i in rows["test"]))
    return t


def cub200(tmp):
    t = Tree(str(tmp), str(tmp / "CUB_200_2011"), {s: "train_test_split.txt" for s in ("train", "test")})
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    names = ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    images = [("002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 2, 1),
              ("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 1, 0),
              ("003.Sooty_Albatross/Sooty_Albatross_0031_1066.jpg", 3, 1),
              ("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1, 1),
              ("002.Laysan_Albatross/Laysan_Albatross_0044_784.jpg", 2, 0)]
    for path, cls, is_train in images:
        t.image(f"images/{path}", ["train" if is_train else "test"], names[cls - 1])
    _write(os.path.join(t.folder, "classes.txt"), "".join(f"{k} {c}\n" for k, c in enumerate(classes, 1)))
    _write(os.path.join(t.folder, "images.txt"), "".join(f"{k} {p}\n" for k, (p, _, _) in enumerate(images, 1)))
    _write(os.path.join(t.folder, "image_class_labels.txt"),
           "".join(f"{k} {c}\n" for k, (_, c, _) in enumerate(images, 1)))
    _write(os.path.join(t.folder, "train_test_split.txt"),
           "".join(f"{k} {s}\n" for k, (_, _, s) in enumerate(images, 1)))
    return t


BUILDERS = {"flowers102": flowers102, "fgvc-aircraft": fgvc_aircraft,
            "stanford-cars": stanford_cars, "oxford-pets": oxford_pets, "food101": food101,
            "dtd": dtd, "cub200": cub200}
CASES = [(name, split) for name, build in BUILDERS.items()
         for split in {"flowers102": ("train", "val", "test"), "fgvc-aircraft": ("train", "val", "test", "trainval"),
                       "dtd": ("train", "val", "test")}.get(name, ("train", "test"))]


def _load(name, root, split):
    return load_dataset(f"{name}:{root}", split, image_size=16, channels=3)


@pytest.mark.parametrize("name,split", CASES)
def test_split_matches_the_tree(tmp_path, name, split):
    tree = BUILDERS[name](tmp_path)
    ds = _load(name, tree.root, split)
    expect = tree.expect[split]
    assert len(ds) == len(expect)
    assert sorted(ds.ids) == sorted(expect)
    assert [ds.class_names[y] for y in ds.labels] == [expect[i][0] for i in ds.ids]
    assert ds.split == split and ds.spec == f"{name}:{tree.root}"
    for i in range(len(ds)):
        x, y = ds[i]
        assert y == ds.labels[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
        # the right file: its solid colour survives resize/crop (JPEG: within a few levels)
        want = torch.tensor(expect[ds.ids[i]][1], dtype=torch.float32) / 255
        assert_close(x.mean(dim=(1, 2)), want, JPEG_SOLID_COLOUR, scale=1, what=ds.ids[i])


@pytest.mark.parametrize("name", BUILDERS)
def test_train_and_test_share_one_class_list(tmp_path, name):
    tree = BUILDERS[name](tmp_path)
    train, test = _load(name, tree.root, "train"), _load(name, tree.root, "test")
    assert train.class_names == test.class_names
    assert not set(train.ids) & set(test.ids) or name == "stanford-cars"  # cars: own folders
    if name == "flowers102":
        assert len(train.class_names) == 102


@pytest.mark.parametrize("name,split", CASES)
def test_missing_annotation_file_is_named(tmp_path, name, split):
    tree = BUILDERS[name](tmp_path)
    needed = tree.needed[split]
    os.remove(os.path.join(tree.folder, needed))
    with pytest.raises(ProbeError, match=os.path.basename(needed)) as err:
        _load(name, tree.root, split)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", BUILDERS)
def test_missing_images_folder_and_root(tmp_path, name):
    tree = BUILDERS[name](tmp_path)
    images = {"flowers102": "jpg", "stanford-cars": "cars_train",
              "fgvc-aircraft": "data/images"}.get(name, "images")
    shutil.rmtree(os.path.join(tree.folder, images))
    with pytest.raises(ProbeError, match=images):
        _load(name, tree.root, "train")
    with pytest.raises(ProbeError, match="nowhere"):
        _load(name, tmp_path / "nowhere", "train")
    shutil.rmtree(tree.folder)
    with pytest.raises(ProbeError, match=os.path.basename(tree.folder)):
        _load(name, tree.root, "train")


@pytest.mark.parametrize("name", BUILDERS)
def test_root_may_be_the_dataset_folder_itself(tmp_path, name):
    tree = BUILDERS[name](tmp_path)
    outer = _load(name, tree.root, "test")
    for root in {tree.folder, os.path.dirname(tree.folder)}:   # dtd: ROOT/dtd and ROOT/dtd/dtd
        inner = _load(name, root, "test")
        assert inner.ids == outer.ids and list(inner.labels) == list(outer.labels)


@pytest.mark.parametrize("name", ["stanford-cars", "oxford-pets", "food101", "cub200"])
def test_no_val_split_is_an_error(tmp_path, name):
    tree = BUILDERS[name](tmp_path)
    with pytest.raises(ProbeError, match="no 'val' split"):
        _load(name, tree.root, "val")


def test_pets_train_reads_trainval(tmp_path):
    tree = oxford_pets(tmp_path)
    ds = _load("oxford-pets", tree.root, "train")
    with open(os.path.join(tree.folder, "annotations/trainval.txt")) as fh:
        listed = [f"images/{line.split()[0]}.jpg" for line in fh]
    assert sorted(ds.ids) == sorted(listed) and ds.official_split == "trainval"


def test_unreadable_image_yields_none(tmp_path):
    tree = food101(tmp_path)
    os.remove(os.path.join(tree.folder, "images/apple_pie/1005649.jpg"))
    ds = _load("food101", tree.root, "train")
    i = ds.ids.index("images/apple_pie/1005649.jpg")
    assert ds[i][0] is None and "1005649" in ds.bad_reason(i)


def test_malformed_annotations_are_user_errors(tmp_path):
    tree = fgvc_aircraft(tmp_path)   # a variant that variants.txt does not list
    _write(os.path.join(tree.folder, "data/images_variant_test.txt"), "1514522 Boeing 999\n")
    with pytest.raises(ProbeError, match="Boeing 999"):
        _load("fgvc-aircraft", tree.root, "test")
    tree = flowers102(tmp_path / "f")   # labels are 1-based: 0 is out of range
    sio.savemat(os.path.join(tree.folder, "imagelabels.mat"), {"labels": np.zeros((1, 8), int)})
    with pytest.raises(ProbeError, match="class index -1"):
        _load("flowers102", tree.root, "train")
    tree = cub200(tmp_path / "c")
    _write(os.path.join(tree.folder, "image_class_labels.txt"), "1 2\n2 1\n3 7\n4 1\n5 2\n")
    with pytest.raises(ProbeError, match="class 7"):
        _load("cub200", tree.root, "train")
