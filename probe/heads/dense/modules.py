"""Segmentation heads on block maps.

Every head takes a list of maps (B, C_i, h_i, w_i), one per key, and returns logits
(B, K, S, S) at the mask's side S.  Several keys are concatenated along channels after a
bilinear resize to a common grid (hyperfeature-style):

- ``seg-linear``: DINOv2's linear protocol: the maps (at the largest key's grid),
  BatchNorm, a 1x1 convolution to K classes, and bilinear upsampling of the *logits* to
  S x S.
- ``seg-mlp``: the maps upsampled bilinearly to S x S, then a pixel-wise MLP (1x1
  convolutions): DDPM-segmentation's pixel classifier (Linear 256, ReLU, BatchNorm,
  Linear 128, ReLU, BatchNorm, Linear K).
- ``seg-fusion``: a learned weighted mix of the keys (hyperfeatures): each key's map,
  resized to the largest grid, standardised (BatchNorm without affine), projected by a
  1x1 convolution to ``dim`` channels and normalised (GroupNorm with one group, no
  affine), so that its softmax weight alone says how much of the mix it is; the mix is
  classified by a 1x1 convolution whose logits are upsampled as ``seg-linear``'s.
- ``seg-ensemble``: ``members`` such MLPs, each seeded differently, trained together on
  the same batches; prediction is the majority vote of their argmaxes (ties: the lowest
  class index), as in DDPM-segmentation.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

SEG_HEADS: dict[str, dict[str, Any]] = {
    "seg-linear": {},
    "seg-mlp": {"hidden": (256, 128)},
    "seg-ensemble": {"hidden": (256, 128), "members": 10},
    "seg-fusion": {"dim": 128},
}
# Adam moves a parameter by about lr per step whatever its gradient: the gain lets the
# mixing logits move that many times faster (as the classification fusion head's)
MIX_GAIN = 10.0


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def stack_maps(xs: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """The maps resized to ``size`` and concatenated along channels."""
    xs = [resize(x, size) for x in xs]
    return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


class SegLinear(nn.Module):
    def __init__(self, channels: int, num_classes: int, grid: tuple[int, int], out_size: int):
        super().__init__()
        self.grid: tuple[int, int] = (int(grid[0]), int(grid[1]))
        self.out_size = int(out_size)
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, num_classes, 1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        z = self.conv(self.bn(stack_maps(xs, self.grid)))
        return resize(z, (self.out_size, self.out_size))


class SegFusion(nn.Module):
    def __init__(self, shapes: list[tuple[int, int, int]], num_classes: int,
                 grid: tuple[int, int], out_size: int, dim: int = 128):
        super().__init__()
        self.grid: tuple[int, int] = (int(grid[0]), int(grid[1]))
        self.out_size = int(out_size)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(s[0], affine=False), nn.Conv2d(s[0], dim, 1),
                          nn.GroupNorm(1, dim, affine=False)) for s in shapes)
        self.mix = nn.Parameter(torch.zeros(len(shapes)))
        self.conv = nn.Conv2d(dim, num_classes, 1)

    def weights(self) -> torch.Tensor:
        return torch.softmax(MIX_GAIN * self.mix, 0)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        z = sum(w[i] * b(resize(x, self.grid)) for i, (b, x) in enumerate(zip(self.branches, xs)))
        return resize(self.conv(z), (self.out_size, self.out_size))


def pixel_mlp(channels: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Conv2d(channels, h, 1), nn.ReLU(), nn.BatchNorm2d(h)]
        channels = h
    return nn.Sequential(*layers, nn.Conv2d(channels, num_classes, 1))


class SegMLP(nn.Module):
    def __init__(self, channels: int, num_classes: int, out_size: int,
                 hidden: tuple[int, ...] = (256, 128), members: int = 1):
        super().__init__()
        self.out_size = int(out_size)
        self.members = nn.ModuleList(pixel_mlp(channels, tuple(hidden), num_classes)
                                     for _ in range(members))

    def member_logits(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        x = stack_maps(xs, (self.out_size, self.out_size))
        return [m(x) for m in self.members]

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Mean logits (used for the loss of a single MLP; :func:`predict_labels` votes)."""
        zs = self.member_logits(xs)
        return zs[0] if len(zs) == 1 else torch.stack(zs).mean(0)


def predict_labels(head: nn.Module, xs: list[torch.Tensor]) -> torch.Tensor:
    """(B, S, S) class per pixel: argmax, or the members' majority vote."""
    if isinstance(head, SegMLP) and len(head.members) > 1:
        votes = torch.stack([z.argmax(1) for z in head.member_logits(xs)])  # (M, B, S, S)
        k = int(votes.max()) + 1  # the vote only needs the classes some member chose
        counts = F.one_hot(votes, k).sum(0)  # (B, S, S, K)
        return counts.argmax(-1)  # first maximum: the lowest class among ties
    return head(xs).argmax(1)


def build_seg_head(name: str, shapes: list[tuple[int, int, int]], num_classes: int,
                   out_size: int, options: dict | None = None) -> tuple[nn.Module, dict]:
    """(module, options used) for ``name`` on maps of per-sample ``shapes`` (C, h, w)."""
    opts = dict(SEG_HEADS[name])
    for k, v in (options or {}).items():
        if k in opts and v is not None:
            opts[k] = tuple(v) if k == "hidden" else int(v)
    channels = sum(s[0] for s in shapes)
    grid = max((s[1], s[2]) for s in shapes)
    if name == "seg-linear":
        return SegLinear(channels, num_classes, grid, out_size), opts
    if name == "seg-fusion":
        return SegFusion(shapes, num_classes, grid, out_size, opts["dim"]), opts
    return SegMLP(channels, num_classes, out_size, opts["hidden"],
                  opts.get("members", 1)), opts
