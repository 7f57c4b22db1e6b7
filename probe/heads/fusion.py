"""The fusion head: one head reading several (t, block) keys of a file, as the probes
that fuse blocks and noise levels (diffusion hyperfeatures, DifFeed/DifFormer) do.

Each key is pooled and projected to a common width: with ``fusion_head="linear"`` its
map is global-average-pooled to (C,), standardised (BatchNorm without affine) and
projected by a Linear; with ``"attention"`` its map is average-pooled to the smallest
grid among the keys, standardised per channel and projected by a 1x1 conv to tokens.
Every projection is then LayerNorm-ed (no affine), so that each key enters the mix at
the same scale and its weight alone says how much of the mix it is.  The projections
are summed with softmax weights (one learned logit per key), and a Linear (linear) or
the attention head's trunk (a CLS token, timm ViT blocks, Linear on the CLS output)
classifies the mix.

Training is the other heads' (:func:`~probe.heads.train.train_pass`): the head is one
unit whose member reads all its keys, so every batch holds every key's rows, served
from memory or streamed from the file within the memory limit (:mod:`.data`).

The linear fusion head starts from the linear probes (:func:`warm_start`).  Trained from
a random start, a few hundred steps on a small set left it below its own best member:
on the demo set (2,000 images, four keys of ldae-fmnist) it reached 73.9 % where the
best key's linear probe reached 80.2 %.  So each key's branch starts as that key's
L-BFGS probe, the mix starts evenly on the keys whose probes the validation split
cannot tell from the best one (none of the others), and early stopping on that split
may keep the start (epoch 0): the head begins where the best keys are and moves only
where validation says it gains.
"""
from __future__ import annotations

import copy
import hashlib
import math
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ProbeError
from ..store import key_name
from .attention import AttentionHead
from .build import MAP, VEC, closest_size, count_params, head_options
from .data import FeatureSource, view_shape
from .linear import EPS, linear_params
from .result import FitResult, make_summary
from .setup import GB
from .train import Unit, head_seed, train_pass

if TYPE_CHECKING:
    from .linear import LinearHead
    from .setup import Setup

FUSION_HEADS = ("linear", "attention")
# Adam moves a parameter by about lr per step whatever its gradient's scale: at lr 1e-3 a
# mixing logit would move by ~0.2 over the few hundred steps of a small set and the
# weights would stay near uniform.  The gain makes the logits move that many times faster.
MIX_GAIN = 10.0
# The warm start (warm_start): the constant channels' level, far above a probe's logits
# (tens), and how far below the chosen keys the others' mixing logits start (e^-8: none)
LEVEL = 1000.0
OFF = 8.0


class FusionHead(nn.Module):
    """``shapes``: per key, (D,) vectors (``head="linear"``) or (C, H, W) maps
    (``"attention"``).  ``forward(xs)`` takes one tensor per key, in that order."""

    def __init__(self, shapes: Sequence[Sequence[int]], num_classes: int, head: str = "linear",
                 dim: int = 128, depth: int = 1, num_heads: int = 4,
                 pos_embed: bool = False) -> None:
        super().__init__()
        self.kind = head
        if head == "linear":
            self.branches = nn.ModuleList(
                nn.Sequential(nn.BatchNorm1d(s[0], affine=False, eps=EPS), nn.Linear(s[0], dim))
                for s in shapes)
            self.fc = nn.Linear(dim, num_classes)
        else:
            self.grid = (min(s[1] for s in shapes), min(s[2] for s in shapes))
            self.branches = nn.ModuleList(
                nn.Sequential(nn.AdaptiveAvgPool2d(self.grid),
                              nn.BatchNorm2d(s[0], affine=False, eps=EPS),
                              nn.Conv2d(s[0], dim, 1)) for s in shapes)
            # the attention head's trunk: its own norm and projection are the branches'
            self.trunk = AttentionHead(dim, num_classes, dim=dim, depth=depth,
                                       num_heads=num_heads, pos_embed=pos_embed,
                                       num_tokens=self.grid[0] * self.grid[1])
            self.trunk.norm_in = nn.Identity()  # type: ignore[assignment]
            self.trunk.proj = nn.Identity()  # type: ignore[assignment]
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mix_logits = nn.Parameter(torch.zeros(len(shapes)))

    def weights(self) -> torch.Tensor:
        """The softmax weight of each key (sums to 1)."""
        return torch.softmax(MIX_GAIN * self.mix_logits, 0)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        if self.kind == "linear":
            return self.fc(sum(w[i] * self.norm(b(x)) for i, (b, x) in
                               enumerate(zip(self.branches, xs))))
        # LayerNorm over the channels of each position, then mix position by position
        mixed = sum(w[i] * self.norm(b(x).movedim(1, -1)) for i, (b, x) in
                    enumerate(zip(self.branches, xs)))
        return self.trunk(mixed.movedim(-1, 1))


class _Fused(nn.Module):
    """A unit's module: one member, the fusion head, reading every view."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.head(xs)]


def fusion_options(options: dict[str, Any] | None) -> dict[str, Any]:
    opts = head_options("fusion", options)
    if opts["fusion_head"] not in FUSION_HEADS:
        raise ProbeError(f"unknown --fusion-head {opts['fusion_head']!r}: use linear or attention")
    return opts


def fusion_views(setup: Setup, keys: Sequence[Any], options: dict[str, Any] | None,
                 min_keys: int = 2) -> tuple[list[tuple[Any, str]], dict[str, Any]]:
    """The views the fusion head reads (all maps or all vectors), checked: enough keys,
    each in the file, maps where the attention head needs them."""
    opts = fusion_options(options)
    if len(keys) < min_keys:
        got = ", ".join(key_name(*k) for k in keys) or "none"
        raise ProbeError(f"the fusion head mixes several keys but this selection gives "
                         f"{len(keys)} ({got}): select at least {min_keys}, e.g. --keys "
                         "t10/blocks.1,t100/blocks.2, or --t and --blocks")
    kind = MAP if opts["fusion_head"] == "attention" else VEC
    keys = [setup.train.key(k) for k in keys]
    if kind == MAP:
        flat = [key_name(*k) for k in keys if not setup.train.is_spatial(k)]
        if flat:
            raise ProbeError(
                f"--fusion-head attention needs spatial maps but {flat[0]} in "
                f"{setup.train.path} is pooled to {setup.train.shape(flat[0])} (--pool "
                f"{setup.train.attrs.get('pool', 'mean')}): re-extract with --pool avg2 or "
                "avg4, or use --fusion-head linear")
    return [(k, kind) for k in keys], opts


def build_fusion(shapes: Sequence[Sequence[int]], num_classes: int, opts: dict[str, Any],
                 comparable_size: bool = False) -> tuple[FusionHead, dict[str, Any]]:
    """(module, options used).  ``comparable_size``: the common width whose parameter
    count is closest to a linear probe on all the keys' features side by side."""
    opts = {k: opts[k] for k in ("fusion_head", "dim", "depth", "num_heads", "pos_embed")}
    attention = opts["fusion_head"] == "attention"

    def make(o):
        return FusionHead(shapes, num_classes, o["fusion_head"], o["dim"], o["depth"],
                          o["num_heads"], o["pos_embed"])

    if comparable_size:
        step = opts["num_heads"] if attention else 1  # token widths split over the heads

        def params(m):
            with torch.device("meta"):  # count without allocating
                return count_params(make({**opts, "dim": m * step}))

        budget = linear_params(sum(s[0] for s in shapes), num_classes)
        opts["dim"] = closest_size(params, budget) * step
    if attention and opts["dim"] % opts["num_heads"]:
        raise ProbeError(f"fusion dim {opts['dim']} is not a multiple of num_heads "
                         f"{opts['num_heads']}: change --dim or --num-heads")
    module = make(opts)
    if not attention:  # the trunk's options do not apply
        opts = {k: opts[k] for k in ("fusion_head", "dim")}
    return module, opts


@torch.no_grad()
def predict_fusion(head: FusionHead, views: Sequence[Any], source: FeatureSource,
                   rows: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Softmax scores of the fusion head over ``rows``."""
    head.eval()
    out = []
    for batch, _ in source.eval_batches(rows, batch_size, views, device=device):
        out.append(F.softmax(head([batch[v] for v in views]).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def linear_probes(setup: Setup, views: Sequence[Any],
                  source: FeatureSource) -> list[dict[str, Any]]:
    """Each view's L-BFGS linear probe (:func:`~probe.heads.solver.fit_linear`) on the
    train rows, with its validation top-1 and loss."""
    from .solver import fit_linear

    cfg = setup.cfg.for_head("linear", len(setup.train_rows))
    dims = [view_shape(setup.train.shape(k), kind)[0] for k, kind in views]
    probes, _ = fit_linear(source, views, dims, setup.train_rows, setup.val_rows,
                           setup.num_classes, cfg, progress=False, desc="fusion start")
    return probes


def start_mix(probes: Sequence[dict[str, Any]], num_val: int) -> list[int]:
    """The keys the fusion head starts on: the probe best on validation and every probe
    the validation split cannot tell from it (:func:`~probe.heads.metrics.tied_with_best`:
    their 95 % intervals overlap)."""
    from .metrics import tied_with_best

    tied = tied_with_best([p["val_top1"] for p in probes], [num_val] * len(probes))
    return [i for i, t in enumerate(tied) if t]


@torch.no_grad()
def warm_start(head: FusionHead, probes: Sequence[LinearHead], keys: Sequence[int]) -> None:
    """Start the linear fusion ``head`` from the linear probes (one
    :class:`~probe.heads.linear.LinearHead` per key) mixed evenly over the ``keys`` chosen
    (indices; the others get no weight): each branch computes its probe's logits in the
    first ``num_classes`` channels of its projection (the BatchNorm's statistics copied)
    and a constant +-``LEVEL`` in the next two, which holds the LayerNorm's scale nearly
    fixed, so that the LayerNorm is close to linear; the classifier reads the logits
    channels back at that scale.  The head then starts as the average of the chosen keys'
    probes' logits (one probe's when one key is chosen)."""
    k = probes[0].fc.weight.shape[0]
    dim = head.fc.weight.shape[1]
    for branch, probe in zip(head.branches, probes):
        seq = cast(nn.Sequential, branch)
        norm, proj = cast(nn.BatchNorm1d, seq[0]), cast(nn.Linear, seq[1])
        for stat in ("running_mean", "running_var"):
            getattr(norm, stat).copy_(getattr(probe.norm, stat))
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[:k].copy_(probe.fc.weight)
        proj.bias[:k].copy_(probe.fc.bias)
        proj.bias[k:k + 2] = torch.tensor([LEVEL, -LEVEL])
    head.fc.weight.zero_()
    head.fc.weight[:, :k].copy_(torch.eye(k) * LEVEL * math.sqrt(2 / dim))
    head.fc.bias.zero_()
    # softmax of MIX_GAIN * logits: equal on the chosen keys, e^-OFF times less elsewhere
    logits = torch.full((len(probes),), -OFF / MIX_GAIN)
    logits[list(keys)] = 0.0
    head.mix_logits.copy_(logits)


def _start(setup, module, views, source, opts):
    """Warm-start a linear fusion head (see :func:`warm_start`) where it can: a
    validation split to choose the keys on, and a projection wider than the classes
    (by the two constant channels).  Returns what the summary records (None: a random
    start)."""
    if (opts["fusion_head"] != "linear" or not len(setup.val_rows)
            or opts["dim"] < setup.num_classes + 2):
        return None
    probes = linear_probes(setup, views, source)
    chosen = start_mix(probes, len(setup.val_rows))
    warm_start(module, [p["head"] for p in probes], chosen)
    return dict(keys=[key_name(*views[i][0]) for i in chosen],
                val_top1={key_name(*k): p["val_top1"] for (k, _), p in zip(views, probes)})


def _init_seed(seed, keys):
    """The init seed: fixed by (seed, the keys fused), like every head's."""
    label = "+".join(key_name(*k) for k in keys)
    return head_seed(seed, (0, hashlib.sha1(label.encode()).hexdigest()), "fusion")


def train_fusion(setup: Setup, keys: Sequence[Any], options: dict[str, Any] | None = None,
                 comparable_size: bool = False, progress: bool = True,
                 min_keys: int = 2) -> FitResult:
    """Train one fusion head on ``keys`` of ``setup`` and evaluate it: a
    :class:`FitResult` whose summary has ``keys`` and ``key_weights`` (key -> weight).
    ``min_keys=1`` allows a single key (the tests compare it with the single-key head)."""
    views, opts = fusion_views(setup, keys, options, min_keys)
    keys = [k for k, _ in views]
    cfg = setup.cfg.for_head("fusion", len(setup.train_rows))
    shapes = [view_shape(setup.train.shape(k), kind) for k, kind in views]
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(_init_seed(cfg.seed, keys))
        module, opts = build_fusion(shapes, setup.num_classes, opts, comparable_size)
    source = FeatureSource(setup.train, views, cfg.memory_limit_gb * GB, cfg.stream)
    start = _start(setup, module, views, source, opts)
    unit = Unit(_Fused(module), views, lambda m, i: copy.deepcopy(m.head).eval(), members=1)
    desc = f"fusion x{len(keys)}"
    states, elapsed = train_pass([unit], source, setup.train_rows, setup.val_rows, cfg,
                                 progress=progress, desc=desc, from_start=start is not None)
    s = states[0][0]
    eval_src, rows = setup.eval_source(views)
    scores = predict_fusion(s["head"], views, eval_src or source, rows, cfg.batch_size,
                            torch.device(cfg.device))
    weights = s["head"].weights().detach().cpu().tolist()
    extra = dict(val_top1=s["val_top1"], val_loss=s["val_loss"],
                 selected_epoch=s["selected_epoch"], epochs_run=s["epochs_run"],
                 train_time_s=round(elapsed, 3), keys_in_pass=len(keys),
                 streamed=source.streamed, warm_start=start,
                 key_weights={key_name(*k): round(float(w), 6) for k, w in zip(keys, weights)})
    summary = make_summary(setup, "fusion", views, opts, count_params(module), comparable_size,
                           scores, extra, cfg)
    return FitResult(summary, scores, s["head"])
