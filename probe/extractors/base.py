"""The contract every model family implements.

An :class:`Extractor` wraps one diffusion network together with everything needed
to probe it: its noise schedule, its input pipeline (normalisation, and the VAE for
latent models), its blocks in forward order, and how to treat class labels.

Subclasses provide ``_forward(x, t, y)`` (the network's own call) and
``_block_modules()`` (an ordered ``name -> nn.Module`` of the probe-able blocks);
everything else — block ids, hooks, early exit, the null class — lives here.

A network that sees the clean image (a reference network: timm, torchvision) sets
``has_timesteps = False`` and has no schedule: its t is None everywhere.
"""
from collections.abc import Sequence
from typing import Any, TypeAlias, Union

import torch
from torch import nn

from ..errors import ProbeError
from ..precision import full_precision
from ..selection import Spec, resolve_blocks
from ..tokens import to_map
from .hooks import capture, run_until_stop
from .schedules import Schedule

# Timesteps as callers give them: one for the whole batch, or one per input.
Timesteps: TypeAlias = Union[int, float, Sequence[int], torch.Tensor]
# Class labels: one for the whole batch, one per input, or None (the null class).
Labels: TypeAlias = Union[int, Sequence[int], torch.Tensor, None]


class Extractor(nn.Module):
    family = "base"
    any_image_size = False  # a convolutional pixel-space net that runs at other sizes
    has_timesteps = True    # False: no schedule, no noise, t is None (reference networks)
    num_prefix_tokens = 0   # token outputs: class/register tokens before the patch grid
    # A convolutional network (ADM, SD U-Nets): on CUDA the pipeline stores its weights and
    # inputs channels_last, which cuDNN's conv kernels run faster (and tensor cores need).
    prefers_channels_last = False
    schedule: Schedule

    def __init__(self, net, *, name, schedule, image_size, image_channels=3,
                 num_classes=None, null_class=None, vae=None, vae_scale=0.18215,
                 config=None, source=None):
        super().__init__()
        self.net = net
        self.name = name
        self.schedule = schedule
        self.image_size = image_size          # pixel side the model expects
        self.image_channels = image_channels  # pixel channels the model expects
        self.num_classes = num_classes        # None: unconditional
        self.null_class = null_class          # label meaning "no class", if the model has one
        self.vae = vae                        # latent models: an AutoencoderKL
        self.vae_scale = vae_scale
        self.config = dict(config or {})
        self.source = source                  # where the weights came from (path or hub id)

    # ---- blocks -------------------------------------------------------------
    def _block_modules(self):
        raise NotImplementedError

    @property
    def block_names(self) -> list[str]:
        return list(self._block_modules().keys())

    def resolve_blocks(self, blocks: Spec) -> list[str]:
        """Names, 1-based ids in forward order, 'all', or a comma list of these -> names
        (the grammar of :mod:`probe.selection`)."""
        return resolve_blocks(blocks, self.block_names, self.name,
                              f"`probe blocks {self.name}` shows them with their shapes")

    def block_id(self, name: str) -> int:
        return self.block_names.index(name) + 1

    @torch.no_grad()
    def block_shapes(self, image_size: int | None = None) -> list[tuple[int, str, tuple]]:
        """``(id, name, output shape)`` of every block for one input, from a pass of zeros
        at t = 0; on the meta device (see ``registry.load_architecture``) it costs nothing.
        ``image_size``: another input side, for nets that take any (ADM U-Nets)."""
        c, h, w = self.input_shape
        if image_size is not None and not self.any_image_size and not self.has_timesteps:
            raise ProbeError(f"{self.name} takes {h}x{w} inputs (its own data config): "
                             "drop --image-size")
        if image_size is not None:
            if not self.any_image_size or self.vae is not None:
                raise ProbeError("--image-size (API image_size=...) applies to convolutional "
                                 f"pixel-space models (adm), not to {self.name}")
            h = w = image_size
        device = next(self.parameters()).device
        x = torch.zeros(1, c, h, w, device=device)
        t = torch.zeros(1, dtype=torch.long, device=device) if self.has_timesteps else None
        y = None
        if self.num_classes is not None and self.null_class is None:
            y = torch.zeros(1, dtype=torch.long, device=device)  # shapes do not depend on it
        out = self.forward_intermediates(x, t, "all", y=y, stop_early=False)
        return [(i, n, tuple(out[n].shape[1:])) for i, n in enumerate(self.block_names, 1)]

    # ---- running the network --------------------------------------------------
    def _forward(self, x, t, y):
        raise NotImplementedError

    def use_class_names(self, names: Sequence[str]) -> None:
        """The dataset's class names, for models that build their conditioning from them
        (a Stable Diffusion prompt with {class}); other models ignore them."""

    def labels(self, y: Labels, batch: int, device: torch.device) -> torch.Tensor | None:
        """The class labels to feed: y if given, else the null class; never the true labels
        silently.  Class-conditional models without a null class need an explicit y."""
        if self.num_classes is None:
            return None
        if y is None:
            if self.null_class is None:
                raise ProbeError(
                    f"{self.name} is class-conditional and has no null class: pass labels "
                    "explicitly (API: y=..., CLI: --class-label N or --true-labels)")
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        y = torch.as_tensor(y, device=device).long()
        return y.expand(batch) if y.dim() == 0 else y

    def _timesteps(self, t: Timesteps | None, batch: int, device: torch.device) -> torch.Tensor:
        if t is None:
            raise ProbeError(f"{self.name} is a diffusion model: give a timestep t")
        if not (torch.is_tensor(t) and t.is_meta):  # shape-only runs carry no values
            self.schedule.check_t(t.cpu() if torch.is_tensor(t) else t)
        t = torch.as_tensor(t, device=device)
        t = t.long() if not t.is_floating_point() else t
        return t.expand(batch) if t.dim() == 0 else t

    def forward(self, x: torch.Tensor, t: Timesteps | None, y: Labels = None) -> torch.Tensor:
        """The network's full output for input x (already in model space) at timestep t
        (None for a network without timesteps)."""
        if not self.has_timesteps:
            if t is not None:
                raise ProbeError(f"{self.name} has no timestep (it sees the clean image): "
                                 "pass t=None (CLI: drop --t)")
            return self._forward(x, None, self.labels(y, x.shape[0], x.device))
        tt = self._timesteps(t, x.shape[0], x.device)
        return self._forward(x, tt, self.labels(y, x.shape[0], x.device))

    def forward_intermediates(self, x: torch.Tensor, t: Timesteps | None, blocks: Any,
                              y: Labels = None,
                              stop_early: bool = True) -> dict[str, torch.Tensor]:
        """Raw outputs of the requested blocks, as ``{name: tensor}`` in forward order.

        No noise is added here: x is the network input.  With ``stop_early`` the pass
        ends after the deepest requested block.
        """
        names = self.resolve_blocks(blocks)
        modules = self._block_modules()
        deepest = max(names, key=self.block_names.index)
        with capture({n: modules[n] for n in names},
                     stop_after=deepest if stop_early else None) as out:
            run_until_stop(self.forward, x, t, y)
        return {n: out[n] for n in sorted(names, key=self.block_names.index)}

    def fp32_modules(self) -> dict[str, nn.Module]:
        """Modules of the forward that must run in float32 under ``--precision bf16|fp16``
        (:func:`probe.precision.keep_fp32` wraps them).  Default: diffusers' sinusoidal
        ``Timesteps`` modules (SD U-Nets, diffusers DiT) and the VAE.  A family adds its own
        by overriding this; :meth:`prepare` and :meth:`q_sample` always run in float32."""
        out = {name: m for name, m in self.named_modules() if type(m).__name__ == "Timesteps"}
        if self.vae is not None:
            out["vae"] = self.vae
        return out

    # ---- the diffusion process ----------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        if not self.has_timesteps:
            raise ProbeError(f"{self.name} has no timesteps (it sees the clean image)")
        return self.schedule.num_timesteps

    def q_sample(self, x0: torch.Tensor, t: Timesteps, noise: torch.Tensor) -> torch.Tensor:
        """Noise a model-space input x0 to timestep t with the given noise."""
        if not self.has_timesteps:
            raise ProbeError(f"{self.name} has no noise process (it sees the clean image)")
        t = self._timesteps(t, x0.shape[0], x0.device)
        with full_precision(x0.device):  # sqrt(1 - abar) * noise: no bf16 rounding here
            return self.schedule.q_sample(x0, t, noise)

    # ---- input pipeline -------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, image_channels, S, S) -> network input (pixels in [-1, 1],
        or VAE latents for latent models: posterior mean times the VAE scale).  Runs in
        float32 under autocast: an fp16 VAE encoder is known to overflow into NaNs."""
        x = images * 2.0 - 1.0
        if self.vae is not None:
            vae_dtype = next(self.vae.parameters()).dtype
            with full_precision(x.device):
                x = self.vae.encode(x.to(vae_dtype)).latent_dist.mean * self.vae_scale
        return x

    @property
    def input_pipeline(self) -> str:
        """What :meth:`prepare` does, in words (recorded with the features)."""
        if self.vae is not None:
            return (f"to [-1,1], VAE posterior mean x {self.vae_scale} "
                    f"({self.config.get('vae') or 'VAE'})")
        return "to [-1,1]"

    @property
    def data_size(self) -> int:
        """The side datasets resize (shorter side) and centre-crop images to for this model;
        :meth:`prepare` takes it from there (reference networks crop further)."""
        return self.image_size

    @property
    def data_interpolation(self) -> str:
        """How datasets resize images to :attr:`data_size` (torchvision's mode names)."""
        return "bicubic"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one network input (after :meth:`prepare`)."""
        c = self.config.get("in_channels", self.image_channels)
        s = self.config.get("input_size", self.image_size)
        return (c, s, s)

    to_map = staticmethod(to_map)  # the one in probe.tokens, shared with the pooling

    def describe(self) -> dict[str, Any]:
        """What a feature file records about the model."""
        return {
            "model": self.name,
            "family": self.family,
            "schedule": self.schedule.describe() if self.has_timesteps else None,
            "image_size": self.image_size,
            "image_channels": self.image_channels,
            "num_classes": self.num_classes,
            "null_class": self.null_class,
            "latent": self.vae is not None,
            "config": self.config,
            "source": self.source,
        }
