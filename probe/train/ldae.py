"""The l-DAE objective (Chen et al. 2024, the paper's final recipe by default).

Per image: a timestep t (uniform, or the fixed ``single_t``), the noisy input from the
model's own schedule (``q_sample``: noise in the tokenizer's latent, d numbers per patch,
decoded back to pixels or fed as the latent map; or noise in pixels), a prediction of
the clean image (the original, or as the tokenizer keeps it) or of the added noise, and
the squared residual: with PCA measured in the full basis, weight 1 on the first d
components and ``residual_weight`` (0.1) on the rest; with the patch AE/VAE the same
split by the decoder's range; the conv VAE and pixel noise have no such split (plain
MSE).  Each image's loss is weighted by lambda_t = 1 / (1 + sigma_t^2) (``loss_weight``).
``augment="crop"`` pads each training image by S/8 (rounded) pixels of zeros and crops
it back at a random offset before anything else.
"""
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ProbeError
from ..extractors.ldae import extractor as ldae
from .tokenizers import fit_tokenizer, load_tokenizer

AUGMENTS = ("none", "crop")


class LDAEObjective:
    family = "ldae"

    def __init__(self, model, augment="none"):
        if augment not in AUGMENTS:
            raise ProbeError(f"--augment must be one of {', '.join(AUGMENTS)}, not {augment!r}")
        self.model, self.augment = model, augment
        # what build() did to the tokenizer, recorded in the checkpoint
        self.tokenizer_meta = getattr(model, "tokenizer_meta", None)
        cfg = model.config
        self.target, self.single_t = cfg["target"], cfg["single_t"]
        self.loss_weight, self.residual_weight = cfg["loss_weight"], cfg["residual_weight"]
        self.net_output = cfg["net_output"]

    def per_image_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean weighted squared residual per image, (B,)."""
        r = pred - target
        if self.model.net.tokenizer is None:
            return r.pow(2).flatten(1).mean(1)
        return self.model.net.tokenizer.weighted_error(r, self.residual_weight)

    def sample_t(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        if self.single_t is not None:
            return torch.full((batch,), self.single_t, dtype=torch.long)
        return torch.randint(0, self.model.num_timesteps, (batch,), generator=generator)

    def loss(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
             ) -> torch.Tensor:
        """Weighted denoising loss of a batch of images in [0, 1] (labels unused).
        Randomness comes from ``generator`` (a CPU generator: same draws on any device)."""
        model = self.model
        if self.augment == "crop":
            images = random_crop(images, generator)
        x0 = model.to_pixels(images)
        t = self.sample_t(x0.shape[0], generator)
        latent_input = model.config["net_input"] == "latent" and model.net.tokenizer is not None
        with torch.no_grad():  # the tokenizer is frozen
            start = model.clean_input(x0) if latent_input else x0
        noise = torch.randn(start.shape, generator=generator).to(x0.device, x0.dtype)
        t = t.to(x0.device)
        with torch.no_grad():
            x_t = model.schedule.q_sample(start, t, noise)
        pred = model.net(x_t, t)
        if self.target == "noise":
            target = model.schedule.added_noise(noise)
        elif self.net_output == "projected" and model.net.tokenizer is not None:
            with torch.no_grad():
                target = model.net.tokenizer.project(x0)
        else:
            target = x0
        err = self.per_image_error(pred, target)
        if self.loss_weight == "sigma":
            _, sigma = model.schedule.coefficients(t.cpu())
            err = err * (1 / (1 + sigma ** 2)).to(err.device, err.dtype)
        return err.mean()

    def export(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        meta = dict(meta or {})
        if self.tokenizer_meta is not None:
            meta["tokenizer"] = self.tokenizer_meta
        return self.model.checkpoint(meta)


def random_crop(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad (zeros) by S/8 pixels and crop back to S at a random offset per image."""
    s = images.shape[-1]
    pad = max(1, round(s / 8))
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (images.shape[0], 2), generator=generator)
    return torch.stack([padded[i, :, a:a + s, b:b + s]
                        for i, (a, b) in enumerate(offsets.tolist())])


def build(config: Mapping[str, Any], images: Any = None, pca_patches: int = 50000, seed: int = 0,
          tokenizer_checkpoint: str | None = None,
          tokenizer_options: Mapping[str, Any] | None = None, progress: bool = False
          ) -> ldae.LDAEExtractor:
    """A fresh l-DAE for ``config``; what was done to its tokenizer is recorded as its
    ``tokenizer_meta``.  With ``tokenizer_checkpoint`` (a ``probe train tokenizer``
    file) the tokenizer is loaded from it; else, with ``images`` (indexable by index
    arrays, in [0, 1]), it is fitted (PCA, on ``pca_patches`` patches drawn with
    ``seed``) or trained (``tokenizer_options``: steps, batch_size, lr, kl_weight) as a
    first stage."""
    model = ldae.build(config, source="probe train ldae")
    tok = model.net.tokenizer
    if tok is not None and tokenizer_checkpoint is not None:
        model.tokenizer_meta = load_tokenizer(tok, model.config, tokenizer_checkpoint)
    elif tok is not None and images is not None:
        model.tokenizer_meta = fit_tokenizer(tok, images, model.to_pixels, patches=pca_patches,
                                             seed=seed, progress=progress,
                                             **(tokenizer_options or {}))
    return model


__all__ = ["AUGMENTS", "LDAEObjective", "build", "random_crop"]
