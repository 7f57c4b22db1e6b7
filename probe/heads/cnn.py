"""CNN probe on a spatial map (C, H, W).

The input is normalised per channel (BatchNorm without affine, as the linear probe), a
1x1 convolution brings C down to ``width`` (so the head stays small on wide U-Net maps),
then ``depth - 1`` 3x3 convolutions, stride 2 while the map is larger than 2x2 (so that
the pooled features see the layout, not just a bag of local patterns), each with
BatchNorm and ReLU; global average pool and a Linear classifier.
"""
import torch
from torch import nn

from .linear import EPS


def _conv(cin, cout, k, stride=1):
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CNNHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 128, depth: int = 2,
                 size: int | None = None) -> None:
        super().__init__()
        layers = [nn.BatchNorm2d(channels, affine=False, eps=EPS)] + _conv(channels, width, 1)
        for _ in range(depth - 1):
            stride = 2 if size is not None and size > 2 else 1
            layers += _conv(width, width, 3, stride)
            size = None if size is None else (size + 1) // 2 if stride == 2 else size
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
