"""MLP probe on pooled features: BatchNorm without affine (as the linear probe), then
Linear + ReLU layers and a Linear classifier."""
from torch import nn

from .linear import EPS


class MLPHead(nn.Module):
    def __init__(self, dim, num_classes, hidden=(512,)):
        super().__init__()
        layers = [nn.BatchNorm1d(dim, affine=False, eps=EPS)]
        for h in hidden:
            layers += [nn.Linear(dim, h), nn.ReLU(inplace=True)]
            dim = h
        layers.append(nn.Linear(dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
