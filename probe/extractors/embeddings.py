"""The sinusoidal timestep embedding, shared by every family (ADM U-Net, DiT, l-DAE)."""
import math

import torch
import torch.nn.functional as F

from ..precision import full_precision


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps t (B,) -> (B, dim): cosines
    first, then sines, at frequencies max_period^(-i/half), zero-padded to an odd dim.

    This is guided-diffusion's ``timestep_embedding``, DiT's
    ``TimestepEmbedder.timestep_embedding`` and diffusers'
    ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``, bit for bit.  The
    operation order matters: for a ``half`` that is not a power of two (ADM-64 has
    dim 192), ``exp(-log(P) * i / half)`` and ``exp(i * (-log(P) / half))`` differ in the
    last bit, which moves the embedding of t = 999 by ~3e-5.
    """
    with full_precision(t.device):  # bf16 has 8 mantissa bits: cos(999 f) would be noise
        return _sinusoids(t, dim, max_period)


def _sinusoids(t, dim, max_period):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))
