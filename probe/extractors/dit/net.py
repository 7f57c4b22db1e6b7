"""The DiT network (Peebles & Xie 2023), with the state-dict layout of the original
``facebookresearch/DiT`` code, so its released checkpoints and ``train.py`` outputs
load as they are.

Built from timm's ViT pieces as the original is.  ``num_classes=0`` gives an
unconditional DiT (no label embedding), for models trained with this toolkit.  The
l-DAE (``ldae.py``) is built from the same block, final layer and timestep embedder.
"""
import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from timm.models.vision_transformer import Attention, Mlp, PatchEmbed
from torch import nn

from ...errors import ProbeError
from ..config import check_keys as refuse_unknown
from ..config import read_config
from ..embeddings import timestep_embedding

# The DiT constructor's arguments and defaults (DiT-XL/2, 256px).
DEFAULTS = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
                learn_sigma=True)


def resolve_config(given: Mapping[str, Any]) -> dict[str, Any]:
    """User arguments -> the complete, typed DiT constructor arguments."""
    c = read_config(given, DEFAULTS, "DiT argument", _TAKES)
    if c["hidden_size"] % c["num_heads"] or c["hidden_size"] % 4:
        raise ProbeError(f"DiT hidden_size={c['hidden_size']} must be a multiple of num_heads="
                         f"{c['num_heads']} and of 4")
    if c["input_size"] % c["patch_size"]:
        raise ProbeError(f"DiT input_size={c['input_size']} must be a multiple of patch_size="
                         f"{c['patch_size']}")
    return c


_TAKES = f"DiT takes {', '.join(DEFAULTS)} and vae"


def check_keys(given: Mapping[str, Any]) -> None:
    """Refuse an argument DiT does not take, before anything is loaded."""
    refuse_unknown(given, DEFAULTS, "DiT argument", _TAKES)


def describe(name: str, config: Mapping[str, Any]) -> str:
    """The architecture, for messages about weights that do not fit it."""
    return (f"the DiT of {name} (hidden_size={config['hidden_size']}, depth={config['depth']}, "
            f"input_size={config['input_size']}, num_classes={config['num_classes']})")


def as_linear(module: nn.Module) -> nn.Linear:
    """An item of an nn.Sequential (typed nn.Module) that is a linear layer, as one."""
    assert isinstance(module, nn.Linear), module
    return module


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed(dim: int, side: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (side*side tokens in row-major order, dim) as
    DiT (after MAE) builds it: the first half of the channels encodes the column, the
    second half the row.  Computed in float64 on the CPU, like the original's numpy."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device="cpu") / quarter)
    grid = torch.arange(side, dtype=torch.float64, device="cpu")
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")

    def embed(pos):
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(cols), embed(rows)], dim=1).float()


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_embedding(t, self.frequency_embedding_size)
        # float32 sines into a half net
        return self.mlp(freqs.to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding; with label dropout (classifier-free guidance training) the table
    has one extra row, the null class ``num_classes``."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning: the condition sets shift, scale and
    a residual gate for both the attention and the MLP branch."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio),
                       act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """``DiT(input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio,
    class_dropout_prob, num_classes, learn_sigma)``, the original's arguments and defaults
    (DiT-XL/2 on 32x32x4 SD-VAE latents)."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
                 learn_sigma=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_classes = num_classes

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        if num_classes:
            self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # A parameter, not a buffer, so it sits in the state dict as in the original;
        # it is fixed, never trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size),
                                      requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The original's initialisation.  adaLN-Zero zeroes every residual gate, so an
        untrained DiT's blocks all pass the patch embedding through unchanged."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        side = int(self.x_embedder.num_patches ** 0.5)
        self.pos_embed.copy_(sincos_pos_embed(self.pos_embed.shape[-1], side)[None])
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear map on flat patches
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.num_classes:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(as_linear(self.t_embedder.mlp[0]).weight, std=0.02)
        nn.init.normal_(as_linear(self.t_embedder.mlp[2]).weight, std=0.02)
        for m in [as_linear(b.adaLN_modulation[-1]) for b in self.modules()
                  if isinstance(b, (DiTBlock, FinalLayer))] + [self.final_layer.linear]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) tokens -> (B, C, H, W)."""
        p, c = self.patch_size, self.out_channels
        side = math.isqrt(x.shape[1])
        x = x.reshape(x.shape[0], side, side, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], c, side * p, side * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) noisy input, t (B,) timesteps, y (B,) labels (ignored when
        unconditional) -> (B, out_channels, H, W): the noise prediction, then, with
        learn_sigma, the variance interpolation."""
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t)
        if self.num_classes:
            c = c + self.y_embedder(y)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))
