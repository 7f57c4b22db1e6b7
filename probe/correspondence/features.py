"""Dense feature maps of the images a pair set needs, through the usual extraction.

Images are fed whole, resized to a square of ``image_size`` (PIL bicubic, aspect ratio not
kept), as DIFT does (``img.resize(img_size)``): the feature map then covers the whole
original image, so upsampling it to the original size puts every cell back where it was.
Features are extracted with :func:`probe.extract` (``pool="none"``, one map per image
id) into a cache folder; a complete cached file made with the same settings and holding
every key asked for is reused (a sweep over t and blocks, a re-run), and a killed run
resumes from its parts.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from ..data.datasets import ImageDataset
from ..errors import ProbeError
from ..store import FeatureFile, open_features
from .pairs import PairSet

SQUARE = "resize to {s}x{s} (whole image, aspect ratio not kept; PIL bicubic)"


class PairImages(ImageDataset):
    """The unique images of a pair set, each resized to ``size`` x ``size``; labels are
    category indices (class names: the categories, for a ``{class}`` prompt)."""

    def __init__(self, pairs: PairSet, size: int, channels: int | None):
        import torch
        from torchvision.transforms import v2 as T

        from ..data.transforms import match_channels

        ids = pairs.image_ids()
        cats = pairs.categories or ["image"]
        cat_of: dict[str, str] = {}
        for p in pairs.pairs:
            cat_of.setdefault(p.src, p.category)
            cat_of.setdefault(p.trg, p.category)
        labels = [cats.index(cat_of[i]) if cat_of[i] in cats else 0 for i in ids]
        super().__init__(f"{pairs.spec}[{pairs.split}]", pairs.split, ids, labels, cats,
                         image_size=size, channels=channels)
        self.sources = [pairs.images[i] for i in ids]
        self.square = int(size)
        # the square resize happens in _load (PIL, as DIFT); here only the tensor steps
        self.transform = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True),
                                    T.Lambda(lambda x: match_channels(x.clamp(0, 1), channels))])

    def _load(self, i: int) -> Any:
        from PIL import Image

        src = self.sources[i]
        if isinstance(src, np.ndarray):
            im = Image.fromarray(src)
        else:
            with Image.open(src) as f:
                im = f.convert("RGB") if f.mode not in ("L", "RGB") else f.copy()
        return im.resize((self.square, self.square), Image.Resampling.BICUBIC)

    def describe_transform(self) -> str:
        return SQUARE.format(s=self.square) + f", to [0,1], channels -> {self.channels}"


def check_image_size(model: Any, size: int | None) -> int:
    """The side images are fed at: ``size`` or the model's own; another side only for
    networks that run at any size (ADM U-Nets, Stable Diffusion)."""
    own = int(model.image_size)
    if size is None or int(size) == own:
        return own
    if int(size) < 8:
        raise ProbeError(f"--image-size must be at least 8 pixels, not {size}")
    if not (model.any_image_size or model.family in ("sd", "sdxl")):
        raise ProbeError(f"{model.name} takes {own}x{own} inputs only: drop --image-size (it "
                         "applies to adm and sd models)")
    if model.family in ("sd", "sdxl") and int(size) % 64:
        raise ProbeError(f"--image-size {size}: Stable Diffusion needs a multiple of 64 (e.g. 768)")
    return int(size)


def _same(attrs: dict, want: dict) -> bool:
    """Settings as a file reads them back (the string "true" reads as True)."""
    from ..store import _attr_value, _read_attr

    return all(attrs.get(k) == _read_attr(_attr_value(v)) for k, v in want.items())


def find_cached(folder: str, want: dict, keys: Sequence[tuple]) -> str | None:
    """A complete feature file in ``folder`` made with ``want``'s settings that holds every
    key, or None."""
    if not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".h5"):
            continue
        try:
            with open_features(os.path.join(folder, name)) as f:
                if _same(f.attrs, want) and set(keys) <= set(f.keys):
                    return f.path
        except ProbeError:
            continue
    return None


def extract_maps(model: Any, pairs: PairSet, t: Any, blocks: Any, cache: str, *,
                 image_size: int | None, ensemble: int, seed: int, class_label: Any,
                 precision: str = "fp32",
                 batch_size: int, device: Any, progress: bool, log: Callable[[str], Any],
                 command: str | None) -> str:
    """The path of a feature file with the maps of every image ``pairs`` needs at ``t`` x
    ``blocks``: a cached one, or one extracted now (resuming a killed run)."""
    from ..options import NoiseOptions
    from ..pipeline.run import _timesteps, extract, weights_sha256

    size = check_image_size(model, image_size)
    data = PairImages(pairs, size, model.image_channels)
    names = sorted(model.resolve_blocks(blocks), key=model.block_names.index)
    ts = _timesteps(model, NoiseOptions(t=t, ensemble=ensemble))
    keys = [(tt, b) for tt in (ts or [None]) for b in names]
    model.use_class_names(data.class_names)
    want = {"model": model.name, "weights_sha256": weights_sha256(model), "pool": "none",
            "data": data.spec, "split": data.split, "num_samples": len(data),
            "class_label": class_label, "precision": precision,
            "transform": f"{data.describe_transform()}; model input: {model.input_pipeline}"}
    if model.has_timesteps:  # a file of a network without timesteps records no noise
        want.update(noise_seed=int(seed), ensemble=int(ensemble))
    os.makedirs(cache, exist_ok=True)
    found = find_cached(cache, want, keys)
    if found:
        log(f"features: reusing {found}")
        return found
    digest = hashlib.sha256(json.dumps([want, [list(k) for k in keys]], sort_keys=True,
                                       default=str).encode()).hexdigest()[:10]
    out = os.path.join(cache, f"{model.name.replace('/', '_').replace(':', '_')}-{size}px-"
                              f"{digest}.h5")
    return extract(model, data, t=ts or None, blocks=names, out=out, pool="none",
                   noise_seed=seed, ensemble=ensemble, class_label=class_label,
                   batch_size=batch_size, device=device, precision=precision,
                   progress=progress, log=log,
                   command=command)


class MapReader:
    """Maps of one variant (one or several keys, possibly from several files) by image id.

    Every file must hold spatial maps of whole images (made by ``probe correspond``, whose
    transform record says so) and every image id the pairs need."""

    def __init__(self, files: Sequence[FeatureFile], keys: Sequence[Sequence[tuple]],
                 ids: Sequence[str]):
        self.parts = []
        for f, ks in zip(files, keys):
            _check_file(f, ks, ids)
            rows = {i: r for r, i in enumerate(f.ids)}
            self.parts += [(f.dataset(k), rows) for k in ks]

    def maps(self, image_id: str) -> list[np.ndarray]:
        return [np.asarray(ds[rows[image_id]], dtype=np.float32) for ds, rows in self.parts]


def _check_file(f: FeatureFile, keys: Sequence[tuple], ids: Sequence[str]) -> None:
    for k in keys:
        if not f.is_spatial(k):
            raise ProbeError(f"{f.path}: {k} holds pooled vectors {f.shape(k)}, not maps: "
                             "correspondence needs spatial features (probe extract --pool none, "
                             "or let probe correspond extract them)")
    transform = str(f.attrs.get("transform", ""))
    if not transform.startswith("resize to ") or "whole image" not in transform:
        raise ProbeError(f"{f.path} was made from centre-cropped images ({transform.split(';')[0]}): "
                         "keypoints cannot be mapped back; make maps with probe correspond "
                         "(it feeds whole images)")
    missing = set(ids) - set(f.ids)
    if missing:
        raise ProbeError(f"{f.path} lacks {len(missing)} of the images the pairs need (first: "
                         f"{sorted(missing)[0]}): extract it from the same --data")
