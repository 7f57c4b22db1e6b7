"""The SiT network (Ma et al. 2024) and REPA's variant of it (Yu et al. 2025), with the
state-dict layouts of willisma/SiT ``models.py`` and sihyun-yu/REPA ``models/sit.py``.

SiT's network is DiT's (same blocks, final layer, sin-cos positions, frequency timestep
embedding) fed a continuous t in [0, 1], so it is built from :mod:`..dit.net`'s pieces.
Two differences from DiT's forward, both SiT's own: with ``learn_sigma`` the second half
of the output channels is dropped (SiT predicts the velocity only), and REPA's variant
adds ``projectors`` (3-layer MLPs) that read the tokens after block ``encoder_depth``:
the features REPA aligns to DINOv2.
"""
from typing import Any

import torch
from timm.models.vision_transformer import Attention
from torch import nn

from ...errors import ProbeError, suggest
from ..config import coerce
from ..dit.net import DEFAULTS as DIT_DEFAULTS
from ..dit.net import DiT

# SiT's constructor arguments (its defaults are DiT's: SiT-XL/2 on 32x32x4 latents), plus
# REPA's: projectors after block encoder_depth (0: none), one per z_dim; qk_norm in timm's
# Attention (timm's default norm_layer of REPA's time, nn.LayerNorm).
DEFAULTS = dict(DIT_DEFAULTS, encoder_depth=0, z_dims="", projector_dim=2048, qk_norm=False)


def parse_z_dims(value: Any) -> list[int]:
    """REPA's ``--projector-embed-dims`` ("768" or "768,1024", or a list) -> list of ints."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ProbeError(f"SiT argument z_dims={value!r} should be integers such as 768 or "
                         "768,1024") from None


def resolve_config(given: dict) -> dict:
    """User arguments -> the complete, typed SiT constructor arguments."""
    given = dict(given)
    decoder = given.pop("decoder_hidden_size", None)  # REPA's; runs only when = hidden_size
    for key in given:
        if key not in DEFAULTS:
            raise ProbeError(f"unknown SiT argument {key!r}{suggest(key, DEFAULTS)}; SiT takes "
                             f"{', '.join(DEFAULTS)}, vae and convention")
    c = {**DEFAULTS, **{k: v if k == "z_dims" else coerce(k, v, DEFAULTS[k], "SiT argument")
                        for k, v in given.items()}}
    c["z_dims"] = ",".join(str(z) for z in parse_z_dims(c["z_dims"]))
    if c["hidden_size"] % c["num_heads"] or c["hidden_size"] % 4:
        raise ProbeError(f"SiT hidden_size={c['hidden_size']} must be a multiple of num_heads="
                         f"{c['num_heads']} and of 4")
    if decoder is not None and coerce("decoder_hidden_size", decoder, int, "SiT argument") != \
            c["hidden_size"]:
        raise ProbeError(f"REPA's decoder_hidden_size={decoder} must equal hidden_size="
                         f"{c['hidden_size']} (REPA's forward feeds the blocks' tokens to the "
                         "final layer)")
    if c["input_size"] % c["patch_size"]:
        raise ProbeError(f"SiT input_size={c['input_size']} must be a multiple of patch_size="
                         f"{c['patch_size']}")
    if c["z_dims"] and not 1 <= c["encoder_depth"] <= c["depth"]:
        raise ProbeError(f"REPA projectors read block encoder_depth: give encoder_depth in "
                         f"1..{c['depth']} (REPA's --encoder-depth), not {c['encoder_depth']}")
    return c


def describe(name: str, config: dict) -> str:
    """The architecture, for messages about weights that do not fit it."""
    repa = (f", encoder_depth={config['encoder_depth']}, z_dims={config['z_dims'] or 'none'}"
            if config["z_dims"] else "")
    return (f"the SiT of {name} (hidden_size={config['hidden_size']}, depth={config['depth']}, "
            f"patch_size={config['patch_size']}, input_size={config['input_size']}, "
            f"num_classes={config['num_classes']}{repa})")


def build_projector(hidden_size: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    """REPA's ``build_mlp``: Linear, SiLU, Linear, SiLU, Linear."""
    return nn.Sequential(nn.Linear(hidden_size, projector_dim), nn.SiLU(),
                         nn.Linear(projector_dim, projector_dim), nn.SiLU(),
                         nn.Linear(projector_dim, z_dim))


class SiT(DiT):
    """``SiT(**resolve_config(...))``: DiT with a continuous t, the velocity output, and
    REPA's optional projectors and qk_norm."""

    def __init__(self, encoder_depth: int = 0, z_dims: Any = "", projector_dim: int = 2048,
                 qk_norm: bool = False, **dit: Any):
        super().__init__(**dit)
        self.learn_sigma = dit.get("learn_sigma", True)
        self.encoder_depth = encoder_depth
        hidden, heads = dit["hidden_size"], dit["num_heads"]
        if qk_norm:  # REPA's block: timm's Attention with LayerNorm on q and k
            for block in self.blocks:
                block.attn = Attention(hidden, num_heads=heads, qkv_bias=True, qk_norm=True,
                                       norm_layer=nn.LayerNorm)
        self.projectors = nn.ModuleList(
            build_projector(hidden, projector_dim, z) for z in parse_z_dims(z_dims))

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) float in [0, 1], y (B,) labels -> the velocity (B, C, H, W).
        The projectors run (and can be hooked) right after block ``encoder_depth``; their
        outputs are not part of the return value."""
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t)
        if self.num_classes:
            c = c + self.y_embedder(y)
        for i, block in enumerate(self.blocks, 1):
            tokens = block(tokens, c)
            if i == self.encoder_depth:
                for projector in self.projectors:
                    projector(tokens)  # (B, T, z_dim): REPA's z, read by hooks
        out = self.unpatchify(self.final_layer(tokens, c))
        return out[:, : self.in_channels] if self.learn_sigma else out


def block_order(net: SiT) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` in forward order: blocks, with the projectors after block
    ``encoder_depth``."""
    order = []
    for i, block in enumerate(net.blocks, 1):
        order.append((f"blocks.{i - 1}", block))
        if i == net.encoder_depth:
            order += [(f"projectors.{j}", p) for j, p in enumerate(net.projectors)]
    return order


__all__ = ["DEFAULTS", "SiT", "block_order", "describe", "parse_z_dims", "resolve_config"]
