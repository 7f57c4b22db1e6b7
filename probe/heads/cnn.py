"""CNN probe on a spatial map (C, H, W).

The input is normalised per channel (BatchNorm without affine, as the linear probe), a
1x1 convolution brings C down to ``width`` (so the head stays small on wide U-Net maps),
then ``depth - 1`` 3x3 convolutions, each with BatchNorm and ReLU; global average pool
and a Linear classifier.
"""
from torch import nn

from .linear import EPS


def _conv(cin, cout, k):
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class CNNHead(nn.Module):
    def __init__(self, channels, num_classes, width=256, depth=2):
        super().__init__()
        layers = [nn.BatchNorm2d(channels, affine=False, eps=EPS)] + _conv(channels, width, 1)
        for _ in range(depth - 1):
            layers += _conv(width, width, 3)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
