"""The l-DAE's tokenizers: patches, and the four kinds of the paper's tokenizer table.

Every tokenizer maps pixels (B, C, S, S) to a latent of ``d`` numbers per token, one
token per ``p x p`` patch of the ViT's grid, and back:

- ``pca``: patch-wise PCA (``probe.train.pca`` fits it); the latent is the first ``d``
  coordinates in the PCA basis.
- ``patch-ae``: a linear encoder V and decoder U^T per patch, around the patch mean:
  ``x -> mean + U^T V (x - mean)``.
- ``patch-vae``: the same with a second linear map giving the log-variance of a
  Gaussian posterior; its latent (the code used by the l-DAE) is the posterior mean Vx.
- ``conv-vae``: a small convolutional VAE (diffusers' ``AutoencoderKL``) whose latent grid
  is the ViT's patch grid, so it has ``d`` channels per token (see ``convvae.py``).

The l-DAE freezes its tokenizer; ``probe.train.tokenizers`` trains the AE and VAE kinds.
A patch is flattened channel-major, ``(c, i, j)``; patches come in row-major order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .convvae import ConvVAE
from .patches import Tokenizer, patchify, unpatchify

KINDS = ("pca", "patch-ae", "patch-vae", "conv-vae")


class PatchPCA(Tokenizer):
    """Patch-wise PCA: ``mean`` (D,), ``components`` (D, D) orthonormal rows in order of
    decreasing ``variance``; the latent is the first ``d`` coordinates."""

    kind = "pca"
    mean: torch.Tensor  # buffers, set by set_basis
    components: torch.Tensor
    variance: torch.Tensor

    def __init__(self, channels, patch_size, d):
        super().__init__(channels, patch_size, d)
        D = channels * patch_size ** 2
        # Until fitted: the identity basis (pixel coordinates), so the module is usable.
        self.register_buffer("mean", torch.zeros(D))
        self.register_buffer("components", torch.eye(D))
        self.register_buffer("variance", torch.ones(D))

    def set_basis(self, mean: Any, components: Any, variance: Any) -> None:
        self.mean.copy_(torch.as_tensor(mean))
        self.components.copy_(torch.as_tensor(components))
        self.variance.copy_(torch.as_tensor(variance))

    def coords(self, x: torch.Tensor, center: bool = True) -> torch.Tensor:
        """Pixels (B, C, H, W) -> full-basis PCA coordinates per patch (B, N, D)."""
        t = patchify(x, self.patch_size)
        if center:
            t = t - self.mean.to(t.dtype)
        return t @ self.components.to(t.dtype).T

    def pixels(self, z: torch.Tensor, shape: Sequence[int], center: bool = True
               ) -> torch.Tensor:
        """Full-basis coordinates (B, N, D) -> pixels of the given shape."""
        t = z @ self.components.to(z.dtype)
        if center:
            t = t + self.mean.to(z.dtype)
        return unpatchify(t, self.patch_size, *shape[1:])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.coords(x)[..., : self.d]

    def decode(self, z: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        full = torch.zeros(*z.shape[:-1], self.components.shape[0], dtype=z.dtype,
                           device=z.device)
        full[..., : self.d] = z
        return self.pixels(full, shape)

    def latent_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return self.coords(noise, center=False)[..., : self.d]

    # The PCA path keeps its own arithmetic (full basis, masked), which the shipped
    # models' features were computed with (tests/extractors/test_features_unchanged.py).
    def mix(self, x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor,
            sigma: torch.Tensor) -> torch.Tensor:
        """mean + V^T (gamma V (x0 - mean) + sigma V noise): the noisy input of the latent
        DAE.  gamma, sigma broadcast over the batch; V is the first d components."""
        z = self.coords(x0)
        n = self.coords(noise, center=False)
        keep = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device)
        keep[: self.d] = 1
        return self.pixels(keep * (gamma * z + sigma * n), x0.shape)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x -> mean + V^T V (x - mean): the image as the d-dim tokenizer keeps it."""
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return self.mix(x, torch.zeros_like(x), one, 0 * one)

    def project_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Pixel-shaped noise -> V^T V noise (the part of it the latent noise keeps)."""
        n = self.coords(noise, center=False)
        n[..., self.d:] = 0
        return self.pixels(n, noise.shape, center=False)

    def weighted_error(self, r: torch.Tensor, residual_weight: float) -> torch.Tensor:
        z = self.coords(r, center=False)                          # (B, N, D)
        w = torch.full((z.shape[-1],), residual_weight, device=r.device, dtype=r.dtype)
        w[: self.d] = 1.0
        return (z.pow(2) * w).mean(dim=(1, 2))


class PatchAE(Tokenizer):
    """A linear autoencoder per patch: ``mean + U^T V (x - mean)``.  ``variational``
    adds a log-variance map (the patch VAE); its code is the posterior mean."""

    mean: torch.Tensor  # a buffer: the patch mean

    def __init__(self, channels, patch_size, d, variational=False):
        super().__init__(channels, patch_size, d)
        self.variational = variational
        self.kind = "patch-vae" if variational else "patch-ae"
        D = channels * patch_size ** 2
        self.register_buffer("mean", torch.zeros(D))
        # V and U start equal (orthonormal rows): gradient steps then keep the two
        # factors at about the same scale, so the latent is not arbitrarily stretched.
        # A private generator: the tokenizer's init must not shift the ViT's (global RNG).
        q, _ = torch.linalg.qr(torch.randn(D, d, generator=torch.Generator().manual_seed(0)))
        self.encoder = nn.Parameter(q.T.contiguous())             # V (d, D)
        self.decoder = nn.Parameter(q.T.contiguous())             # U (d, D)
        if variational:  # log-variance = W (x - mean) + b, starting small and constant
            self.logvar_weight = nn.Parameter(torch.zeros(d, D))
            self.logvar_bias = nn.Parameter(torch.full((d,), -4.0))

    def _centered(self, x):
        t = patchify(x, self.patch_size)
        return t - self.mean.to(t.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._centered(x) @ self.encoder.to(x.dtype).T

    def decode(self, z: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        t = z @ self.decoder.to(z.dtype) + self.mean.to(z.dtype)
        return unpatchify(t, self.patch_size, *shape[1:])

    def decoder_rows(self) -> torch.Tensor:
        return self.decoder

    def losses(self, patches: torch.Tensor, generator: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training losses on patches (n, D): (squared error per patch / D, KL per patch
        summed over the d latent coordinates / D); the KL is 0 for the plain AE."""
        c = patches - self.mean
        mu = c @ self.encoder.T
        kl = torch.zeros((), dtype=patches.dtype, device=patches.device)
        z = mu
        if self.variational:
            logvar = c @ self.logvar_weight.T + self.logvar_bias
            # drawn on the CPU generator, so a run draws the same noise on any device
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
            z = mu + (0.5 * logvar).exp() * eps
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1).mean() / c.shape[-1]
        recon = (z @ self.decoder - c).pow(2).mean()
        return recon, kl


def make_tokenizer(config: Mapping[str, Any]) -> Tokenizer | None:
    """The (untrained) tokenizer an l-DAE config names, or None for pixel noise."""
    if config["noise_space"] == "pixel":
        return None
    kind, c, p, d = config["tokenizer"], config["in_channels"], config["patch_size"], \
        config["latent_dim"]
    if kind == "pca":
        return PatchPCA(c, p, d)
    if kind in ("patch-ae", "patch-vae"):
        return PatchAE(c, p, d, variational=kind == "patch-vae")
    return ConvVAE(c, p, d, config["image_size"], config["tokenizer_width"])


__all__ = ["KINDS", "Tokenizer", "PatchPCA", "PatchAE", "make_tokenizer", "patchify",
           "unpatchify"]
