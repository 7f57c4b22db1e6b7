"""MLP probe on pooled features: BatchNorm without affine (as the linear probe), then
Linear + ReLU layers and a Linear classifier."""
from collections.abc import Sequence

import torch
from torch import nn

from .linear import EPS


class MLPHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, hidden: Sequence[int] = (512,)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(dim, affine=False, eps=EPS)]
        for h in hidden:
            layers += [nn.Linear(dim, h), nn.ReLU(inplace=True)]
            dim = h
        layers.append(nn.Linear(dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
