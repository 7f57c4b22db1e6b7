import gzip
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data import load_dataset, parse_spec
from probe.data.datasets import FASHION_MNIST_ROOT, imagenet50_classes, read_idx
from probe.errors import ProbeError
from tolerances import RESIZE_SHARP, assert_close_f32

HAVE_FMNIST = os.path.isdir(FASHION_MNIST_ROOT)


def test_demo_is_balanced_real_fashion_mnist():
    for split, per_class in (("train", 200), ("test", 100)):
        ds = load_dataset("demo", split)
        assert np.bincount(ds.labels).tolist() == [per_class] * 10
        assert len(set(ds.ids)) == len(ds)
        x, y = ds[0]
        assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1


@pytest.mark.skipif(not HAVE_FMNIST, reason="needs apt-get install dataset-fashion-mnist")
def test_demo_images_are_the_official_ones_and_idx_matches_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    full = load_dataset("fashion-mnist", "test")
    assert len(full) == 10000 and len(load_dataset("fashion-mnist", "train")) == 60000
    # torchvision's own IDX reader on the decompressed files
    for kind, reader, ours in (("images-idx3-ubyte", read_image_file, full.images),
                               ("labels-idx1-ubyte", read_label_file, full.labels)):
        raw = tmp_path / f"t10k-{kind}"
        with gzip.open(os.path.join(FASHION_MNIST_ROOT, f"t10k-{kind}.gz")) as src:
            raw.write_bytes(src.read())
        np.testing.assert_array_equal(reader(str(raw)).numpy(), ours)
    demo = load_dataset("demo", "test")
    idx = [int(i.split("/")[1]) for i in demo.ids]
    np.testing.assert_array_equal(demo.images, full.images[idx])
    np.testing.assert_array_equal(demo.labels, full.labels[idx])


def test_fashion_mnist_missing_files_name_them(tmp_path):
    with pytest.raises(ProbeError, match="train-images-idx3-ubyte.gz"):
        load_dataset(f"fashion-mnist:{tmp_path}", "train")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big"))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big"))
    with pytest.raises(ProbeError, match="truncated"):
        load_dataset(f"fashion-mnist:{tmp_path}", "test")


@pytest.mark.numerics
def test_resize_crop_and_channels_match_pil():
    ds = load_dataset("demo", "train", image_size=20, channels=3)
    x, _ = ds[5]
    assert x.shape == (3, 20, 20) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # copies
    ref = Image.fromarray(ds.images[5]).resize((20, 20), Image.BICUBIC)
    assert np.abs(x[0].numpy() - np.asarray(ref, np.float32) / 255).mean() < RESIZE_SHARP


def test_imagefolder_and_imagenet50_layouts(tmp_path):
    wnids, names = imagenet50_classes()
    assert len(wnids) == 50 and len(set(wnids)) == 50 and wnids[0] == "n01601694"
    for split, k in (("train", 2), ("val", 1)):
        for w in wnids + ["n99999999"]:  # an extra class folder that must be ignored
            os.makedirs(tmp_path / split / w)
            for i in range(k):
                Image.new("RGB", (10, 12), (i * 40, 0, 0)).save(tmp_path / split / w / f"{w}_{i}.JPEG")
    ds = load_dataset(f"imagenet50:{tmp_path}", "train", image_size=8, channels=3)
    assert len(ds) == 100 and ds.class_names[0] == f"{wnids[0]} {names[0]}"
    assert ds.ids[0] == os.path.join("train", wnids[0], f"{wnids[0]}_0.JPEG")
    val = load_dataset(f"imagenet50:{tmp_path}", "test")
    assert len(val) == 50 and sorted(set(val.labels)) == list(range(50))
    shutil.rmtree(tmp_path / "val" / wnids[3])
    with pytest.raises(ProbeError, match="1 of the 50 class folders"):
        load_dataset(f"imagenet50:{tmp_path}", "val")
    folder = load_dataset(f"imagefolder:{tmp_path / 'train'}", "train")
    assert len(folder) == 102 and len(folder.class_names) == 51


@pytest.mark.parametrize("spec, message", [
    ("nosuch", "unknown dataset"), ("imagefolder", "needs a folder"),
    ("imagefolder:/no/such", "not found"), ("demo", "splits train and test")])
def test_bad_specs(spec, message):
    with pytest.raises(ProbeError, match=message):
        load_dataset(spec, "val" if spec == "demo" else "train")


def test_empty_imagefolder(tmp_path):
    os.makedirs(tmp_path / "a")
    (tmp_path / "a" / "notes.txt").write_text("no images here")
    with pytest.raises(ProbeError, match="no image files"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_parse_spec_and_read_idx_roundtrip(tmp_path):
    assert parse_spec("Fashion-MNIST:/x") == ("fashion-mnist", "/x")
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
                     + arr.tobytes())
    np.testing.assert_array_equal(read_idx(str(path)), arr)


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (20, 3)])
@pytest.mark.numerics
def test_batched_loading_equals_one_by_one(size, channels):
    # extraction fetches whole batches (one transform call); the values must be those of
    # the per-image path, including resize to a size other than the stored 28 px
    ds = load_dataset("demo", "train", size, channels)
    idx = [5, 0, 17, 3, 99]
    one_by_one = torch.stack([ds[i][0] for i in idx])
    # exact: the same per-image resize on the same machine, same kernels
    assert torch.equal(torch.stack(ds.load_batch(idx)), one_by_one)


@pytest.mark.numerics
def test_resize_uses_the_interpolation_asked_for():
    # reference networks resize as their own transforms do (torchvision's weights: bilinear)
    from torchvision.transforms import v2 as T

    raw = load_dataset("demo", "train", None, 1)[7][0]
    for mode in ("bilinear", "bicubic"):
        ds = load_dataset("demo", "train", 40, 1, interpolation=mode)
        want = T.Resize(40, interpolation=T.InterpolationMode(mode), antialias=True)(raw)
        # torchvision's own resize, perhaps batched: 4 + 4 taps (separable), values <= 1
        assert_close_f32(ds[7][0], want.clamp(0, 1), n=8, scale=1)
        assert mode in ds.describe_transform()
    bil, bic = (load_dataset("demo", "train", 40, 1, interpolation=m)[7][0] for m in ("bilinear", "bicubic"))
    assert not torch.equal(bil, bic)
