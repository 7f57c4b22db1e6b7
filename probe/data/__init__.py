"""Datasets by spec string: ``NAME[:ROOT]`` (see :data:`SPECS`), read from local disk.

``load_dataset(spec, split, image_size, channels, interpolation)`` returns a torch Dataset of
``(image in [0,1] (C,S,S), label)`` with ``ids``, ``class_names``, ``spec`` and ``split``.
"""
from typing import Any

from ..errors import ProbeError, suggest
from . import datasets as _d
from . import segmentation as _seg

SPECS = {
    "demo": "bundled balanced subset of real Fashion-MNIST (default)",
    "fashion-mnist": "Fashion-MNIST IDX files; ROOT defaults to " + _d.FASHION_MNIST_ROOT,
    "imagefolder": "ROOT/CLASS/IMAGE or ROOT/SPLIT/CLASS/IMAGE",
    "imagenet50": "ImageNet ROOT/train, ROOT/val filtered to the 50 ImageNet-50 classes",
    "flowers102": "Oxford Flowers-102 (torchvision layout)",
    "fgvc-aircraft": "FGVC-Aircraft 2013b (torchvision layout)",
    "stanford-cars": "Stanford Cars (torchvision layout)",
    "oxford-pets": "Oxford-IIIT Pet (torchvision layout)",
    "food101": "Food-101 (torchvision layout)",
    "dtd": "Describable Textures (torchvision layout)",
    "cub200": "CUB-200-2011 (images.txt, image_class_labels.txt, train_test_split.txt)",
    **_seg.SEG_SPECS,  # with masks (probe.data.segmentation)
}
_NEEDS_ROOT = set(SPECS) - {"demo", "fashion-mnist", "demo-seg", "fashion-mnist-seg"}


def parse_spec(spec: str | None) -> tuple[str, str | None]:
    name, _, root = (spec or "demo").partition(":")
    name = name.strip().lower()
    if name not in SPECS:
        raise ProbeError(f"unknown dataset {name!r}{suggest(name, SPECS)}; use one of "
                         f"{', '.join(SPECS)} as NAME[:ROOT]")
    if name in _NEEDS_ROOT and not root:
        raise ProbeError(f"dataset {name} needs a folder: --data {name}:ROOT")
    return name, root or None


def load_dataset(spec: str | None = "demo", split: str = "train", image_size: int | None = None,
                 channels: int | None = None, interpolation: str = "bicubic") -> _d.ImageDataset:
    name, root = parse_spec(spec)
    kw: dict[str, Any] = dict(image_size=image_size, channels=channels,
                              interpolation=interpolation)
    if name == "demo":
        return _d.demo(split, **kw)
    if name == "fashion-mnist":
        return _d.fashion_mnist(root, split, **kw)
    if name in _seg.SEG_SPECS:  # demo-seg and fashion-mnist-seg need no folder
        return _seg.load(name, root, split, **kw)
    assert root is not None  # parse_spec refused the rest without a folder
    if name == "imagefolder":
        return _d.imagefolder(root, split, **kw)
    if name == "imagenet50":
        return _d.imagenet50(root, split, **kw)
    from . import finegrained

    return finegrained.load(name, root, split, **kw)


def data_channels(dataset: Any) -> int:
    """The channel count of a dataset's images as stored (1 for grayscale), read from its
    first image: what a model trained on it takes when no channel count is given."""
    image = dataset[0][0]
    if image is None:
        raise ProbeError(f"cannot read the first training image: {dataset.bad_reason(0)}")
    return image.shape[0]


__all__ = ["SPECS", "parse_spec", "load_dataset", "data_channels"]
