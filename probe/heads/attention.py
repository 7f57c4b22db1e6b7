"""Attention probe on a spatial map (C, H, W), as in "Diffusion Models Beat GANs on
Image Classification": a 1x1 projection of the map to tokens, a CLS token, a few
transformer blocks (timm's), and Linear on the CLS output.

Without a positional embedding (the default, as in the paper) the head sees the map
as a set of tokens: it is invariant to permuting the spatial positions.
"""
import torch
from torch import nn

from .linear import EPS


class AttentionHead(nn.Module):
    def __init__(self, channels, num_classes, dim=128, depth=1, num_heads=4, pos_embed=False,
                 num_tokens=None, mlp_ratio=4.0):
        # timm (and the torchvision it imports) only for runs that build this head
        from timm.layers import trunc_normal_
        from timm.models.vision_transformer import Block

        super().__init__()
        self.norm_in = nn.BatchNorm2d(channels, affine=False, eps=EPS)
        self.proj = nn.Conv2d(channels, dim, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = None
        if pos_embed:
            if not num_tokens:
                raise ValueError("pos_embed needs num_tokens (H * W of the map)")
            self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, num_tokens + 1, dim),
                                                        std=0.02))
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(self.norm_in(x)).flatten(2).transpose(1, 2)  # (B, HW, dim)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        return self.fc(self.norm(self.blocks(tokens))[:, 0])
