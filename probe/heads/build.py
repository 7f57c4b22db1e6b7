"""The head zoo: which input each head needs, its options, and comparable sizing."""
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ProbeError, suggest
from .attention import AttentionHead
from .cnn import CNNHead
from .linear import LinearHead, linear_params
from .mlp import MLPHead

MAP, VEC = "map", "vec"  # what a head reads: the spatial map (C,H,W) or a vector (D,)

# name -> (input it reads, default options)
HEADS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": (VEC, {}),
    "mlp": (VEC, {"hidden": (512,)}),
    "cnn": (MAP, {"width": 128, "depth": 2}),
    "attention": (MAP, {"dim": 128, "depth": 1, "num_heads": 4, "pos_embed": False}),
    # several keys at once (probe.heads.fusion); it reads maps with fusion_head="attention"
    "fusion": (VEC, {"fusion_head": "linear", "dim": 128, "depth": 1, "num_heads": 4,
                     "pos_embed": False}),
}
BASELINES: dict[str, dict[str, Any]] = {"logreg": {"C": 1.0}, "knn": {"k": 20}}
ALL_HEADS = list(HEADS) + list(BASELINES)


def check_head(name: str) -> str:
    if name not in HEADS and name not in BASELINES:
        raise ProbeError(f"unknown head {name!r}{suggest(name, ALL_HEADS)}; choose from "
                         f"{', '.join(ALL_HEADS)}")
    return name


def head_view(name: str) -> str:
    """MAP or VEC; baselines read vectors."""
    return HEADS[name][0] if name in HEADS else VEC


def head_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The defaults for ``name`` updated with the options that apply to it (others are
    ignored, so one set of flags can serve a grid of heads)."""
    defaults = dict(HEADS[name][1] if name in HEADS else BASELINES[name])
    for k, v in (options or {}).items():
        if k in defaults and v is not None:
            defaults[k] = tuple(v) if k == "hidden" else v
    return defaults


def _make(name, shape, num_classes, opts):
    if name == "linear":
        return LinearHead(shape[0], num_classes)
    if name == "mlp":
        return MLPHead(shape[0], num_classes, hidden=opts["hidden"])
    if name == "cnn":
        return CNNHead(shape[0], num_classes, width=opts["width"], depth=opts["depth"],
                       size=min(shape[1:]))
    return AttentionHead(shape[0], num_classes, dim=opts["dim"], depth=opts["depth"],
                         num_heads=opts["num_heads"], pos_embed=opts["pos_embed"],
                         num_tokens=shape[1] * shape[2])


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _size_knob(name, opts):
    """(option to scale, step): the width that comparable sizing searches over."""
    if name == "attention":  # the token width must split evenly over the heads
        return "dim", opts.get("num_heads", 1)
    return {"mlp": "hidden", "cnn": "width"}[name], 1


def closest_size(count: Callable[[int], int], budget: int) -> int:
    """The multiplier m >= 1 whose ``count(m)`` is closest to ``budget`` (``count`` grows
    with m)."""
    hi = 1
    while count(hi) < budget and hi < 1 << 16:
        hi *= 2
    lo = max(1, hi // 2)
    while lo < hi:  # smallest m with count(m) >= budget
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < budget else (lo, mid)
    return min({max(1, lo - 1), lo}, key=lambda m: abs(count(m) - budget))


def comparable_options(name: str, shape: Sequence[int], num_classes: int,
                       opts: dict[str, Any]) -> dict[str, Any]:
    """Options with the head's width chosen so that its parameter count is as close as
    possible to the linear probe's on the same (pooled) features."""
    if name == "linear":
        return opts
    knob, step = _size_knob(name, opts)

    def value(m: int) -> int | tuple[int, ...]:
        width = m * step
        return tuple([width] * max(1, len(opts["hidden"]))) if knob == "hidden" else width

    def params(m: int) -> int:
        with torch.device("meta"):  # count without allocating
            return count_params(_make(name, shape, num_classes, {**opts, knob: value(m)}))

    best = closest_size(params, linear_params(shape[0], num_classes))
    return {**opts, knob: value(best)}


def build_head(name: str, shape: Sequence[int], num_classes: int,
               options: Mapping[str, Any] | None = None, comparable_size: bool = False
               ) -> tuple[nn.Module, dict[str, Any]]:
    """(module, options used) for head ``name`` on inputs of per-sample ``shape``."""
    opts = head_options(name, options)
    if comparable_size:
        opts = comparable_options(name, shape, num_classes, opts)
    if name == "attention" and opts["dim"] % opts["num_heads"]:
        raise ProbeError(f"attention dim {opts['dim']} is not a multiple of num_heads "
                         f"{opts['num_heads']}: change --dim or --num-heads")
    return _make(name, shape, num_classes, opts), opts
