"""The ADM U-Net of guided-diffusion (Dhariwal & Nichol 2021), rebuilt for probing.

Module names and parameter shapes follow the original ``UNetModel`` exactly, so the
released checkpoints load with ``strict=True``; the arithmetic follows it closely
enough that block outputs agree to ~1e-6 in float32.  Only what the released models
use is here: 2-D images, learned (convolutional) resampling, no gradient
checkpointing and no float16 torso (``use_fp16``/``use_checkpoint`` only saved
memory during training, they do not change the weights).
"""
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ProbeError
from ...precision import full_precision
from ..embeddings import timestep_embedding

NUM_CLASSES = 1000

# create_model's channel multipliers when channel_mult is "".
_DEFAULT_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def _zeroed(module):
    # The original starts every residual branch and the output at zero.
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class Norm32(nn.GroupNorm):
    """GroupNorm over 32 groups, computed in float32 whatever the activations' dtype."""

    def __init__(self, channels):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x.device):  # also under autocast, as guided-diffusion's fp16 mode
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                               self.eps)
        return out.to(x.dtype)


class Downsample(nn.Module):
    """Strided 3x3 conv (used when resblock_updown is off)."""

    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv (used when resblock_updown is off)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _resize(x, how):
    if how == "down":
        return F.avg_pool2d(x, 2)
    if how == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding; optionally halves or doubles the size.

    With scale-shift norm the embedding modulates the second GroupNorm (FiLM);
    otherwise it is added before it.
    """

    def __init__(self, channels, emb_channels, out_channels=None, dropout=0.0,
                 scale_shift=True, resample=None):
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        self.resample = resample
        self.in_layers = nn.Sequential(
            Norm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(
            Norm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Resampling sits between the activation and the first conv, on both paths.
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](_resize(h, self.resample))
        x = _resize(x, self.resample)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions.

    ``new_order`` is how the qkv channels are laid out: the legacy layout
    (``QKVAttentionLegacy``) groups channels by head first, then q/k/v; the new one
    (``QKVAttention``) by q/k/v first, then head.  Checkpoints trained with one give
    garbage with the other, so it must follow ``use_new_attention_order``.
    """

    def __init__(self, channels, num_heads=1, num_head_channels=-1, new_order=False):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ProbeError(f"num_head_channels={num_head_channels} does not divide the "
                                 f"{channels} channels of an attention layer: fix the ADM flags")
            num_heads = channels // num_head_channels
        elif channels % num_heads:
            raise ProbeError(f"num_heads={num_heads} does not divide the {channels} channels "
                             "of an attention layer: fix the ADM flags")
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = Norm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        heads, d, n = self.num_heads, c // self.num_heads, x.shape[-1]
        if self.new_order:
            q, k, v = qkv.reshape(b, 3, heads, d, n).unbind(1)
        else:
            q, k, v = qkv.reshape(b, heads, 3, d, n).unbind(2)
        # (b, heads, d, n) -> (b, heads, n, d); SDPA's default scale is the original's 1/sqrt(d).
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                           v.transpose(-1, -2))
        h = a.transpose(-1, -2).reshape(b, c, n)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class EmbSequential(nn.Sequential):
    """A U-Net block: layers in order, residual blocks also get the embedding."""

    # a U-Net block also takes emb
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (2-D, learned resampling).

    ``attention_ds`` are downsampling factors (1 = full resolution), as in the
    original constructor; :func:`unet_from_flags` converts the command-line flags.
    """

    def __init__(self, *, in_channels=3, model_channels, out_channels, num_res_blocks,
                 attention_ds, channel_mult, dropout=0.0, num_classes=None, num_heads=1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 resblock_updown=False, use_new_attention_order=False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.model_channels = model_channels
        self.num_classes = num_classes
        self.channel_mult = tuple(channel_mult)
        emb_dim = model_channels * 4

        def res(cin, cout=None, resample=None):
            return ResBlock(cin, emb_dim, cout, dropout, use_scale_shift_norm, resample)

        def attn(ch, heads):
            return AttentionBlock(ch, heads, num_head_channels, use_new_attention_order)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        ch = first_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [EmbSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        last = len(channel_mult) - 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(EmbSequential(
                    res(ch, resample="down") if resblock_updown else Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = EmbSequential(res(ch), attn(ch, num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, resample="up") if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbSequential(*layers))

        self.out = nn.Sequential(
            Norm32(ch), nn.SiLU(), _zeroed(nn.Conv2d(first_ch, out_channels, 3, padding=1)))

    @property
    def downsampling(self) -> int:
        """Total downsampling factor: input sides must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
                ) -> torch.Tensor:
        if (y is None) != (self.num_classes is None):
            raise ValueError("pass class labels y if and only if the model is class-conditional")
        dtype = cast(nn.Linear, self.time_embed[0]).weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def parse_channel_mult(channel_mult: Any, image_size: int) -> tuple[float, ...]:
    """create_model's rule: "" -> the released models' multipliers for that size."""
    if isinstance(channel_mult, (tuple, list)):
        return tuple(channel_mult)
    if channel_mult in ("", None):
        if image_size not in _DEFAULT_MULT:
            raise ProbeError(
                f"no default channel_mult for image_size={image_size} (guided-diffusion knows "
                f"{', '.join(map(str, _DEFAULT_MULT))}): pass channel_mult, e.g. '1,2,2,4'")
        return _DEFAULT_MULT[image_size]
    try:
        values = [float(v) for v in str(channel_mult).split(",")]
    except ValueError:
        raise ProbeError(f"channel_mult={channel_mult!r} is not a comma list of numbers, "
                         "e.g. '1,2,2,4'") from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def parse_attention_resolutions(attention_resolutions: Any, image_size: int) -> tuple[int, ...]:
    """Resolutions in pixels ("32,16,8") -> downsampling factors, as create_model does."""
    text = str(attention_resolutions).strip()
    if not text:
        return ()
    try:
        return tuple(image_size // int(r) for r in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise ProbeError(f"attention_resolutions={attention_resolutions!r} is not a comma list "
                         "of resolutions in pixels, e.g. '32,16,8'") from None


def check_attention_reached(f: Mapping[str, Any]) -> None:
    """guided-diffusion silently ignores an attention resolution that no level of the U-Net
    has (e.g. 2 for a 28 px, two-level net); refuse that when training a new model."""
    size = f["image_size"]
    levels = [2 ** i for i in range(len(parse_channel_mult(f["channel_mult"], size)))]
    missing = [size // ds for ds in parse_attention_resolutions(f["attention_resolutions"], size)
               if ds not in levels]
    if missing:
        raise ProbeError(
            f"attention_resolutions={f['attention_resolutions']!r}: no level of this U-Net is "
            f"{missing[0]} px (its levels are {', '.join(str(size // l) for l in levels)} px); "
            "give resolutions in pixels from those, or '' for no attention")


def unet_from_flags(f: Mapping[str, Any]) -> ADMUNet:
    """Build the U-Net from guided-diffusion's model flags (a complete, typed dict)."""
    size = f["image_size"]
    return ADMUNet(
        model_channels=f["num_channels"],
        out_channels=6 if f["learn_sigma"] else 3,
        num_res_blocks=f["num_res_blocks"],
        attention_ds=parse_attention_resolutions(f["attention_resolutions"], size),
        channel_mult=parse_channel_mult(f["channel_mult"], size),
        dropout=f["dropout"],
        num_classes=NUM_CLASSES if f["class_cond"] else None,
        num_heads=f["num_heads"],
        num_head_channels=f["num_head_channels"],
        num_heads_upsample=f["num_heads_upsample"],
        use_scale_shift_norm=f["use_scale_shift_norm"],
        resblock_updown=f["resblock_updown"],
        use_new_attention_order=f["use_new_attention_order"],
    )
