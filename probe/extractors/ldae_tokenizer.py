"""The l-DAE's tokenizer: patches, and patch-wise PCA (``probe.train.pca`` fits it).

A patch is flattened channel-major, ``(c, i, j)``; patches come in row-major order.
"""
import torch
from torch import nn


def patchify(x, p):
    """(B, C, H, W) -> (B, N, C*p*p), patches in row-major order, each flattened (c, i, j)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens, p, c, h, w):
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


class PatchPCA(nn.Module):
    """Patch-wise PCA: ``mean`` (D,), ``components`` (D, D) orthonormal rows in order of
    decreasing ``variance``; the latent is the first ``d`` coordinates."""

    def __init__(self, channels, patch_size, d):
        super().__init__()
        self.channels, self.patch_size, self.d = channels, patch_size, d
        D = channels * patch_size ** 2
        # Until fitted: the identity basis (pixel coordinates), so the module is usable.
        self.register_buffer("mean", torch.zeros(D))
        self.register_buffer("components", torch.eye(D))
        self.register_buffer("variance", torch.ones(D))

    def set_basis(self, mean, components, variance):
        self.mean.copy_(torch.as_tensor(mean))
        self.components.copy_(torch.as_tensor(components))
        self.variance.copy_(torch.as_tensor(variance))

    def coords(self, x, center=True):
        """Pixels (B, C, H, W) -> full-basis PCA coordinates per patch (B, N, D)."""
        t = patchify(x, self.patch_size)
        if center:
            t = t - self.mean.to(t.dtype)
        return t @ self.components.to(t.dtype).T

    def pixels(self, z, shape, center=True):
        """Full-basis coordinates (B, N, D) -> pixels of the given shape."""
        t = z @ self.components.to(z.dtype)
        if center:
            t = t + self.mean.to(z.dtype)
        return unpatchify(t, self.patch_size, *shape[1:])

    def mix(self, x0, noise, gamma, sigma):
        """mean + V^T (gamma V (x0 - mean) + sigma V noise): the noisy input of the latent
        DAE.  gamma, sigma broadcast over the batch; V is the first d components."""
        z = self.coords(x0)
        n = self.coords(noise, center=False)
        keep = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device)
        keep[: self.d] = 1
        return self.pixels(keep * (gamma * z + sigma * n), x0.shape)

    def project(self, x):
        """x -> mean + V^T V (x - mean): the image as the d-dim tokenizer keeps it."""
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return self.mix(x, torch.zeros_like(x), one, 0 * one)

    def project_noise(self, noise):
        """Pixel-shaped noise -> V^T V noise (the part of it the latent noise keeps)."""
        n = self.coords(noise, center=False)
        n[..., self.d:] = 0
        return self.pixels(n, noise.shape, center=False)


__all__ = ["PatchPCA", "patchify", "unpatchify"]
