"""Images -> the tensor a model expects: float in [0, 1], (C, S, S).

Resize the shorter side to S and centre-crop (the usual evaluation transform), then
expand grayscale to the model's channels (or average colour down to one channel).
Normalisation to the model's range is the model's own job (``Extractor.prepare``).

The values are those of torchvision's ``v2.Compose([ToImage(), ToDtype(float32,
scale=True), Resize(S, antialias=True), CenterCrop(S)])`` bit for bit
(tests/data/test_transforms.py checks it); :func:`resize_center_crop` only skips work
whose result the crop throws away.
"""
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# torch resizes these modes (antialiased) in two 1-D passes, width first: a pass can be
# run alone and the other cropped before it, with the same arithmetic per output pixel
SEPARABLE_MODES = ("bilinear", "bicubic")


def image_transform(size: int | None, channels: int | None,
                    interpolation: str = "bicubic") -> Callable[[Any], torch.Tensor]:
    """The dataset transform: a PIL image or a uint8 tensor (C, H, W) or (N, C, H, W) ->
    float (…, C, S, S) in [0, 1]."""
    # torchvision's import pulls in torch._dynamo (over a second): only datasets pay for it,
    # here, once before any loader worker forks rather than in each worker
    from torchvision.transforms import v2  # noqa: F401

    return functools.partial(transform_image, size=size, channels=channels,
                             interpolation=interpolation)


def transform_image(image: Any, size: int | None, channels: int | None,
                    interpolation: str = "bicubic") -> torch.Tensor:
    x = to_float(image)
    if size is not None:
        x = resize_center_crop(x, size, interpolation)
    return match_channels(x.clamp(0, 1), channels)


def to_float(image: Any) -> torch.Tensor:
    """PIL image or tensor (…, C, H, W) -> float32, integers scaled to [0, 1]."""
    from torchvision.transforms.v2 import functional as TF

    if not isinstance(image, torch.Tensor):
        a = np.array(image)  # writable: torch refuses to wrap a read-only array silently
        # (H, W, C) viewed as (C, H, W), not copied: the width pass is about as fast on
        # this layout as on a contiguous copy, which would cost ~0.5 ms more per photo
        image = torch.from_numpy(a).permute(2, 0, 1) if a.ndim == 3 else torch.from_numpy(a)[None]
    return TF.to_dtype(image, torch.float32, scale=True)


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(new H, new W) with the shorter side ``size``, rounded as torchvision's Resize."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize_center_crop(x: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize (…, C, H, W) so the shorter side is ``size`` (antialiased), then centre-crop
    ``size`` x ``size``: torchvision's ``Resize(size)`` + ``CenterCrop(size)``."""
    from torchvision.transforms.v2 import functional as TF

    if interpolation not in SEPARABLE_MODES:
        mode = TF.InterpolationMode(interpolation)
        return TF.center_crop(TF.resize(x, [size], interpolation=mode, antialias=True), [size])
    shape = x.shape
    h, w = shape[-2:]
    nh, nw = resized_shape(h, w, size)
    x = x.reshape(-1, *shape[-3:])
    # width first, as torch's own two-pass resize does; a landscape image's columns are cut
    # to the crop before the height pass, which then does 3/4 of the work (4:3 photos)
    if nw != w:
        x = _resize_1d(x, (h, nw), interpolation)
    left = int(round((nw - size) / 2.0))  # torchvision's anchor (Python's round)
    x = x[..., left:left + size]
    if nh != h:
        x = _resize_1d(x, (nh, size), interpolation)
    top = int(round((nh - size) / 2.0))
    x = x[..., top:top + size, :]
    return x.reshape(*shape[:-2], size, size)


def _resize_1d(x: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=hw, mode=mode, align_corners=False,
                                           antialias=True)


def match_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    if channels is None or x.shape[-3] == channels:
        return x
    if x.shape[-3] == 1:
        return x.expand(*x.shape[:-3], channels, *x.shape[-2:]).contiguous()
    if channels == 1:
        return x.mean(dim=-3, keepdim=True)
    if x.shape[-3] == 4 and channels == 3:  # RGBA
        return x[..., :3, :, :]
    raise ValueError(f"cannot turn {x.shape[-3]} channels into {channels}")


def describe(size: int | None, channels: int | None, interpolation: str = "bicubic") -> str:
    return (f"resize shorter side to {size} ({interpolation}, antialias), center crop {size}, "
            f"to [0,1], channels -> {channels}")
