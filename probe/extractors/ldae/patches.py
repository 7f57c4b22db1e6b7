"""What every l-DAE tokenizer is: patches in the ViT's grid (:func:`patchify`,
:func:`unpatchify`) and the :class:`Tokenizer` interface the network and its schedule use.
The kinds themselves are in ``tokenizer.py`` (patch-wise) and ``convvae.py``.

A patch is flattened channel-major, ``(c, i, j)``; patches come in row-major order.
"""
from collections.abc import Sequence

import torch
from torch import nn


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p), patches in row-major order, each flattened (c, i, j)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


class Tokenizer(nn.Module):
    """What the l-DAE needs of a tokenizer; subclasses give ``encode`` and ``decode``."""

    kind: str | None = None

    def __init__(self, channels, patch_size, d):
        super().__init__()
        self.channels, self.patch_size, self.d = channels, patch_size, d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, C, S, S) -> latent tokens (B, N, d)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Latent tokens (B, N, d) -> pixels of ``shape`` (the inverse projection)."""
        raise NotImplementedError

    def latent_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Pixel-shaped standard normal noise -> standard normal latent noise (B, N, d):
        the first d numbers of each patch, so one noise draw per image serves every kind."""
        return patchify(noise, self.patch_size)[..., : self.d]

    def mix(self, x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor,
            sigma: torch.Tensor) -> torch.Tensor:
        """decode(gamma encode(x0) + sigma eps): the noisy input of the latent DAE."""
        return self.decode(gamma * self.encode(x0) + sigma * self.latent_noise(noise), x0.shape)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x -> decode(encode(x)): the image as the tokenizer keeps it."""
        return self.decode(self.encode(x), x.shape)

    def project_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Pixel-shaped noise -> the pixels it adds through the (affine) decoder."""
        z = self.latent_noise(noise)
        return self.decode(z, noise.shape) - self.decode(torch.zeros_like(z), noise.shape)

    def weighted_error(self, r: torch.Tensor, residual_weight: float) -> torch.Tensor:
        """Mean squared residual per image (B,): weight 1 inside the decoder's range, and
        ``residual_weight`` outside it (PCA: the components beyond d)."""
        t = patchify(r, self.patch_size)                         # (B, N, D)
        with torch.no_grad():
            basis, _ = torch.linalg.qr(self.decoder_rows().to(t.dtype).T)  # (D, d)
        inside = (t @ basis).pow(2).sum(-1)
        total = t.pow(2).sum(-1)
        return ((inside + residual_weight * (total - inside)) / t.shape[-1]).mean(1)

    def decoder_rows(self) -> torch.Tensor:
        raise NotImplementedError
