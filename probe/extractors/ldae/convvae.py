"""The convolutional-VAE tokenizer of the l-DAE: diffusers' ``AutoencoderKL``, small.

Its latent grid is the ViT's patch grid, so each token has ``d`` latent channels, as in
the paper (where the conv VAE downsamples by the patch size).  The downsampling of
``AutoencoderKL`` is a power of two, 2^k with 2^k >= p: the image is padded (edge
replicated) from S to (S / p) * 2^k before encoding and the decoded image is cropped back;
28-px images with 7-px patches are padded to 32 and downsampled 8 times to a 4 x 4 grid.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .patches import Tokenizer


def vae_config(channels: int, patch_size: int, d: int, image_size: int,
               width: int) -> dict[str, Any]:
    k = math.ceil(math.log2(patch_size)) if patch_size > 1 else 0
    widths = tuple([width] + [2 * width] * k)  # one down block per level
    return dict(in_channels=channels, out_channels=channels,
                down_block_types=("DownEncoderBlock2D",) * (k + 1),
                up_block_types=("UpDecoderBlock2D",) * (k + 1),
                block_out_channels=widths, layers_per_block=1, latent_channels=d,
                norm_num_groups=math.gcd(8, width), sample_size=(image_size // patch_size) * 2 ** k,
                mid_block_add_attention=False)


class ConvVAE(Tokenizer):
    kind = "conv-vae"

    def __init__(self, channels, patch_size, d, image_size, width):
        super().__init__(channels, patch_size, d)
        from diffusers import AutoencoderKL

        cfg = vae_config(channels, patch_size, d, image_size, width)
        self.image_size, self.padded = image_size, cfg["sample_size"]
        with torch.random.fork_rng(devices=[]):  # leave the ViT's initialisation as it was
            torch.manual_seed(0)
            self.vae = AutoencoderKL(**cfg)

    def _pad(self, x):
        extra = self.padded - x.shape[-1]
        if not extra:
            return x
        lo = extra // 2
        return F.pad(x, (lo, extra - lo, lo, extra - lo), mode="replicate")

    def _crop(self, x):
        lo = (self.padded - self.image_size) // 2
        return x[..., lo:lo + self.image_size, lo:lo + self.image_size]

    def posterior(self, x: torch.Tensor) -> Any:
        """Pixels -> (mean, logvar) latent maps (B, d, g, g)."""
        moments = self.vae.quant_conv(self.vae.encoder(self._pad(x)))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        mean, _ = self.posterior(x)
        return mean.flatten(2).transpose(1, 2)                    # (B, N, d), row-major

    def decode(self, z: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        side = self.image_size // self.patch_size
        z = z.transpose(1, 2).reshape(z.shape[0], self.d, side, side)
        return self._crop(self.vae.decode(z).sample)

    def project_noise(self, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the conv-VAE decoder is not affine")

    def weighted_error(self, r: torch.Tensor, residual_weight: float) -> torch.Tensor:
        # No linear subspace to split the residual by: plain mean squared error.
        return r.pow(2).flatten(1).mean(1)

    def losses(self, x: torch.Tensor, generator: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training losses on images in [-1, 1]: (squared error per pixel, KL per image
        summed over the latent / number of pixels)."""
        mean, logvar = self.posterior(x)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
        z = mean + (0.5 * logvar).exp() * eps
        recon = self._crop(self.vae.decode(z).sample)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
        return (recon - x).pow(2).mean(), (kl / x[0].numel()).mean()


__all__ = ["ConvVAE", "vae_config"]
