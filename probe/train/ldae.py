"""The l-DAE objective (Chen et al. 2024, the paper's final recipe by default).

Per image: a timestep t (uniform, or the fixed ``single_t``), the noisy input from the
model's own schedule (``q_sample``: noise in the first d PCA coordinates of each patch,
or in pixels), a prediction of the clean image (or of the added noise), and the
squared residual measured in the full PCA basis: weight 1 on the first d components
and ``residual_weight`` (0.1) on the rest.  Pixel noise has no basis: plain MSE.
Each image's loss is weighted by lambda_t = 1 / (1 + sigma_t^2) (``loss_weight``).
"""
import torch

from ..extractors import ldae
from .pca import fit_patch_pca


class LDAEObjective:
    family = "ldae"

    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.target, self.single_t = cfg["target"], cfg["single_t"]
        self.loss_weight, self.residual_weight = cfg["loss_weight"], cfg["residual_weight"]

    def component_weights(self, device, dtype):
        tok = self.model.net.tokenizer
        w = torch.full((tok.components.shape[0],), self.residual_weight, device=device,
                       dtype=dtype)
        w[: tok.d] = 1.0
        return w

    def per_image_error(self, pred, target):
        """Mean weighted squared residual per image, (B,)."""
        r = pred - target
        if self.model.net.tokenizer is None:
            return r.pow(2).flatten(1).mean(1)
        z = self.model.net.tokenizer.coords(r, center=False)        # (B, N, D)
        return (z.pow(2) * self.component_weights(r.device, r.dtype)).mean(dim=(1, 2))

    def sample_t(self, batch, generator):
        if self.single_t is not None:
            return torch.full((batch,), self.single_t, dtype=torch.long)
        return torch.randint(0, self.model.num_timesteps, (batch,), generator=generator)

    def loss(self, images, labels, generator):
        """Weighted denoising loss of a batch of images in [0, 1] (labels unused).
        Randomness comes from ``generator`` (a CPU generator: same draws on any device)."""
        model = self.model
        x0 = model.to_pixels(images)
        t = self.sample_t(x0.shape[0], generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        t = t.to(x0.device)
        x_t = model.schedule.q_sample(x0, t, noise)
        pred = model.net(x_t, t)
        target = x0 if self.target == "clean" else model.schedule.added_noise(noise)
        err = self.per_image_error(pred, target)
        if self.loss_weight == "sigma":
            _, sigma = model.schedule.coefficients(t.cpu())
            err = err * (1 / (1 + sigma ** 2)).to(err.device, err.dtype)
        return err.mean()

    def export(self, meta=None):
        return self.model.checkpoint(meta)


def build(config, images=None, pca_patches=50000, seed=0):
    """A fresh l-DAE for ``config``; with ``images`` (indexable by index arrays, in [0, 1])
    its PCA tokenizer is fitted on ``pca_patches`` patches drawn with ``seed``."""
    model = ldae.build(config, source="probe train ldae")
    tok = model.net.tokenizer
    if tok is not None and images is not None:
        mean, comps, var = fit_patch_pca(images, tok.patch_size, pca_patches, seed,
                                         transform=model.to_pixels)
        tok.set_basis(mean.float(), comps.float(), var.float())
    return model


__all__ = ["LDAEObjective", "build"]
