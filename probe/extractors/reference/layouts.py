"""What the libraries' networks look like, for the reference family: a torchvision
classifier's blocks and its last linear layer, and the layout of lukemelas'
``efficientnet_pytorch`` checkpoints (converted to timm's names by tensor order)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ...errors import ProbeError

_HEADS = {"fc", "classifier", "head", "heads", "avgpool", "global_pool", "dropout", "flatten",
          "AuxLogits", "aux1", "aux2", "pre_logits", "head_drop", "fc_norm"}
_TRUNKS = ("features", "trunk_output", "layers")


def last_linear(net: nn.Module) -> nn.Module | None:
    """A torchvision classifier's last ``nn.Linear``, the one that gives the logits (None
    for a classifier without one, such as SqueezeNet's convolution)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def torchvision_blocks(net: nn.Module) -> list[str]:
    """The natural blocks of a torchvision classifier, in forward order (see the module
    doc of ``reference/extractor.py``)."""
    encoder = getattr(net, "encoder", None)
    if encoder is not None and hasattr(encoder, "layers"):  # ViT
        return [f"encoder.layers.{n}" for n, _ in encoder.layers.named_children()]
    out: list[tuple[str, nn.Module]] = []
    for name, child in net.named_children():
        if name in _HEADS:
            continue
        if name in _TRUNKS and isinstance(child, nn.Sequential) and len(child) > 1:
            out += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            out.append((name, child))
    # a module whose output the next one overwrites in place would be captured changed
    following: list[nn.Module | None] = [c for _, c in out[1:]] + [None]
    return [n for (n, _), nxt in zip(out, following) if not getattr(nxt, "inplace", False)]


def is_efficientnet_pytorch(state: Mapping[str, torch.Tensor]) -> bool:
    """A state dict in the layout of lukemelas' ``efficientnet_pytorch`` (``_conv_stem``,
    ``_blocks.N._depthwise_conv`` ...)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def convert_efficientnet_pytorch(state: Mapping[str, torch.Tensor], net: nn.Module,
                                 path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` weights -> timm's ``tf_efficientnet_*`` names.

    The two layouts hold the same tensors in the same order (stem, every block in forward
    order, head, classifier) under other names, so the i-th tensor goes to the i-th name,
    and every shape must match: a checkpoint of another size or network is refused."""
    own = net.state_dict()
    src = list(state.items())
    if len(src) != len(own) or any(tuple(v.shape) != tuple(w.shape)
                                   for (_, v), w in zip(src, own.values())):
        first = next((f"{k} {tuple(v.shape)} vs {n} {tuple(w.shape)}"
                      for (k, v), (n, w) in zip(src, own.items()) if v.shape != w.shape),
                     f"{len(src)} tensors vs {len(own)}")
        raise ProbeError(f"{path} is in efficientnet_pytorch's layout but does not fit this "
                         f"timm model by tensor order ({first}): use the matching "
                         "tf_efficientnet_* (e.g. timm:tf_efficientnet_lite0)")
    return {n: v for n, (_, v) in zip(own, src)}
