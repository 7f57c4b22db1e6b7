"""Images -> the tensor a model expects: float in [0, 1], (C, S, S).

Resize the shorter side to S and centre-crop (the usual evaluation transform), then
expand grayscale to the model's channels (or average colour down to one channel).
Normalisation to the model's range is the model's own job (``Extractor.prepare``).
"""
from typing import Any

import torch


def image_transform(size: int | None, channels: int | None, interpolation: str = "bicubic"
                    ) -> Any:
    # torchvision's import pulls in torch._dynamo (over a second): only datasets pay for it
    from torchvision.transforms import v2 as T

    steps = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if size is not None:
        mode = T.InterpolationMode(interpolation)  # a reference network's own (timm, torchvision)
        steps += [T.Resize(size, interpolation=mode, antialias=True),
                  T.CenterCrop(size)]
    steps.append(T.Lambda(lambda x: match_channels(x.clamp(0, 1), channels)))
    return T.Compose(steps)


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
