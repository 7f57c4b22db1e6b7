"""The linear probe: BatchNorm without affine, then Linear (the MAE / l-DAE protocol).

:class:`LinearGrid` trains many linear probes at once, one per feature key, from the
same batches (as DDAE does): probes with the same input width are stacked and run as
one batched matmul, so a grid of N probes costs about as much as one;
:func:`linear_grid_units` lays a set of keys out in such grids.
"""
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .train import Unit, head_seed

EPS = 1e-6  # as MAE's linear probe


def init_linear(dim: int, num_classes: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Small normal weights and zero bias; drawn from ``generator`` so that a probe's start
    does not depend on which other probes it is trained with."""
    weight = torch.randn(num_classes, dim, generator=generator) * 0.01
    return weight, torch.zeros(num_classes)


class LinearHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=EPS)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class LinearGrid(nn.Module):
    """Linear probes for several inputs, trained together.

    ``dims``: input width of each member; ``generators``: one per member for its init.
    ``forward(xs)`` takes one (B, D_i) tensor per member and returns one logits tensor
    per member.  Normalisation is BatchNorm's: batch statistics in training, running
    statistics (momentum 0.1, unbiased variance) in eval.
    """

    def __init__(self, dims: Sequence[int], num_classes: int,
                 generators: Sequence[torch.Generator], momentum: float = 0.1) -> None:
        super().__init__()
        self.dims, self.num_classes, self.momentum = list(dims), num_classes, momentum
        self.groups: dict[int, list[int]] = {}  # width -> member indices, stacked in this order
        for i, d in enumerate(self.dims):
            self.groups.setdefault(d, []).append(i)
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for g, (d, members) in enumerate(self.groups.items()):
            init = [init_linear(d, num_classes, generators[i]) for i in members]
            # stored as (n, K, D) and (n, K, 1): logits come out as (n, K, B), the layout in
            # which batched matmuls with few classes run fastest (forward and backward)
            self.weights.append(nn.Parameter(torch.stack([w for w, _ in init])))
            self.biases.append(nn.Parameter(torch.stack([b[:, None] for _, b in init])))
            self.register_buffer(f"mean{g}", torch.zeros(len(members), 1, d))
            self.register_buffer(f"var{g}", torch.ones(len(members), 1, d))

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[Any] = [None] * len(self.dims)
        for g, members in enumerate(self.groups.values()):
            x = torch.stack([xs[i] for i in members])  # (n, B, D)
            mean, var = getattr(self, f"mean{g}"), getattr(self, f"var{g}")
            if self.training:
                # two passes (exact for features with large means); torch.var is slower here
                bmean = x.mean(1, keepdim=True)
                bvar = (x - bmean).square_().mean(1, keepdim=True)
                with torch.no_grad():
                    n = x.shape[1]
                    mean.lerp_(bmean, self.momentum)
                    var.lerp_(bvar * n / max(n - 1, 1), self.momentum)
                mean, var = bmean, bvar
            # BatchNorm folded into the weights: the inputs need no gradient, so
            # W ((x - m) * s) + b == (W s) x + (b - W (m s)), one pass over x
            scale = torch.rsqrt(var + EPS)  # (n, 1, D)
            w = self.weights[g] * scale
            b = self.biases[g] - torch.bmm(self.weights[g], (mean * scale).transpose(1, 2))
            logits = torch.baddbmm(b, w, x.transpose(1, 2))  # (n, K, B)
            for j, i in enumerate(members):
                out[i] = logits[j].t()
        return out

    def export(self, i: int) -> LinearHead:
        """Member ``i`` as a standalone :class:`LinearHead` (a copy)."""
        d = self.dims[i]
        g = list(self.groups).index(d)
        j = self.groups[d].index(i)
        head = LinearHead(d, self.num_classes)
        assert head.norm.running_mean is not None and head.norm.running_var is not None
        with torch.no_grad():
            head.norm.running_mean.copy_(getattr(self, f"mean{g}")[j, 0])
            head.norm.running_var.copy_(getattr(self, f"var{g}")[j, 0])
            head.fc.weight.copy_(self.weights[g][j])
            head.fc.bias.copy_(self.biases[g][j, :, 0])
        return head.to(self.weights[g].device).eval()


def linear_params(dim: int, num_classes: int) -> int:
    return dim * num_classes + num_classes



# Linear probes per stacked grid on CPU, as widths summed: a batch of 256 rows of a grid
# then spans ~4 MB and stays in cache through forward and backward; larger grids run
# from main memory and end up slower than one probe at a time.  GPUs prefer one grid.
CPU_GRID_WIDTH = 4096


def linear_grid_units(views: Sequence[Any], dims: Sequence[int], num_classes: int, seed: int,
                      device: Any
                      ) -> tuple[list[Unit], list[tuple[dict[str, Any], int]], list[int]]:
    """(units, (options, params) per member, the view index of each member): linear probes
    of equal input width stacked into grids, each grid within CPU_GRID_WIDTH on the CPU."""
    cap = CPU_GRID_WIDTH if torch.device(device).type == "cpu" else float("inf")
    # width -> list of member lists, each list within the cap
    chunks: dict[int, list[list[int]]] = {}
    for i, d in enumerate(dims):
        lists = chunks.setdefault(d, [[]])
        if lists[-1] and (len(lists[-1]) + 1) * d > cap:
            lists.append([])
        lists[-1].append(i)
    units = []
    for members in (m for lists in chunks.values() for m in lists):
        gens = [torch.Generator().manual_seed(head_seed(seed, views[i][0], "linear"))
                for i in members]
        grid = LinearGrid([dims[i] for i in members], num_classes, gens)
        units.append((members, Unit(grid, [views[i] for i in members], lambda m, i: m.export(i))))
    order = [i for members, _ in units for i in members]  # views, in the units' member order
    infos: list[tuple[dict[str, Any], int]] = [({}, dims[i] * num_classes + num_classes)
                                               for i in order]
    return [u for _, u in units], infos, order
