"""The contract every model family implements.

An :class:`Extractor` wraps one diffusion network together with everything needed
to probe it: its noise schedule, its input pipeline (normalisation, and the VAE for
latent models), its blocks in forward order, and how to treat class labels.

Subclasses provide ``_forward(x, t, y)`` (the network's own call) and
``_block_modules()`` (an ordered ``name -> nn.Module`` of the probe-able blocks);
everything else — block ids, hooks, early exit, the null class — lives here.
"""
import math
import numbers

import torch
from torch import nn

from ..errors import ProbeError, suggest
from .hooks import capture, run_until_stop


class Extractor(nn.Module):
    family = "base"

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
    def block_names(self):
        return list(self._block_modules().keys())

    def resolve_blocks(self, blocks):
        """Names, 1-based ids in forward order, 'all', or a comma list of these -> names."""
        names = self.block_names
        if blocks is None or blocks == "all":
            return names
        if isinstance(blocks, (str, int)):
            blocks = [blocks]
        out = []
        for b in blocks:
            for item in (str(b).split(",") if isinstance(b, str) else [b]):
                item = item.strip() if isinstance(item, str) else item
                if item == "all":
                    out.extend(names)
                    continue
                if isinstance(item, numbers.Integral) and not isinstance(item, bool) or (
                        isinstance(item, str) and item.isdigit()):
                    i = int(item)
                    if not 1 <= i <= len(names):
                        raise ProbeError(
                            f"block id {i} is out of range: {self.name} has blocks 1..{len(names)}"
                            f" (see `probe blocks {self.name}`)")
                    out.append(names[i - 1])
                elif item in names:
                    out.append(item)
                else:
                    raise ProbeError(
                        f"unknown block {item!r} for {self.name}{suggest(item, names)}; valid: "
                        f"{_short_list(names)}, or ids 1..{len(names)} (`probe blocks "
                        f"{self.name}` shows them all with their shapes)")
        if not out:
            raise ProbeError(f"no blocks requested for {self.name}: give names, ids or 'all' "
                             f"(`probe blocks {self.name}` lists them)")
        seen = set()
        return [n for n in out if not (n in seen or seen.add(n))]

    def block_id(self, name):
        return self.block_names.index(name) + 1

    # ---- running the network --------------------------------------------------
    def _forward(self, x, t, y):
        raise NotImplementedError

    def labels(self, y, batch, device):
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

    def _timesteps(self, t, batch, device):
        if not (torch.is_tensor(t) and t.is_meta):  # shape-only runs carry no values
            self.schedule.check_t(t.cpu() if torch.is_tensor(t) else t)
        t = torch.as_tensor(t, device=device)
        t = t.long() if not t.is_floating_point() else t
        return t.expand(batch) if t.dim() == 0 else t

    def forward(self, x, t, y=None):
        """The network's full output for input x (already in model space) at timestep t."""
        t = self._timesteps(t, x.shape[0], x.device)
        return self._forward(x, t, self.labels(y, x.shape[0], x.device))

    def forward_intermediates(self, x, t, blocks, y=None, stop_early=True):
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

    # ---- the diffusion process ----------------------------------------------------
    @property
    def num_timesteps(self):
        return self.schedule.num_timesteps

    def q_sample(self, x0, t, noise):
        """Noise a model-space input x0 to timestep t with the given noise."""
        t = self._timesteps(t, x0.shape[0], x0.device)
        return self.schedule.q_sample(x0, t, noise)

    # ---- input pipeline -------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, images):
        """Images in [0, 1], (B, image_channels, S, S) -> network input (pixels in [-1, 1],
        or VAE latents for latent models: posterior mean times the VAE scale)."""
        x = images * 2.0 - 1.0
        if self.vae is not None:
            vae_dtype = next(self.vae.parameters()).dtype
            x = self.vae.encode(x.to(vae_dtype)).latent_dist.mean * self.vae_scale
        return x

    @property
    def input_pipeline(self):
        """What :meth:`prepare` does, in words (recorded with the features)."""
        if self.vae is not None:
            return (f"to [-1,1], VAE posterior mean x {self.vae_scale} "
                    f"({self.config.get('vae') or 'VAE'})")
        return "to [-1,1]"

    @property
    def input_shape(self):
        """Shape (C, H, W) of one network input (after :meth:`prepare`)."""
        c = self.config.get("in_channels", self.image_channels)
        s = self.config.get("input_size", self.image_size)
        return (c, s, s)

    @staticmethod
    def to_map(feature):
        """Block output -> spatial map (B, C, H, W).  Token sequences (B, N, D) on a square
        grid are reshaped to (B, D, sqrt N, sqrt N)."""
        if feature.dim() == 4:
            return feature
        if feature.dim() == 3:
            b, n, d = feature.shape
            side = math.isqrt(n)
            if side * side != n:
                raise ProbeError(f"cannot lay {n} tokens on a square grid")
            return feature.transpose(1, 2).reshape(b, d, side, side)
        raise ProbeError(f"cannot make a spatial map from a feature of shape {tuple(feature.shape)}")

    def describe(self):
        """What a feature file records about the model."""
        return {
            "model": self.name,
            "family": self.family,
            "schedule": self.schedule.describe(),
            "image_size": self.image_size,
            "image_channels": self.image_channels,
            "num_classes": self.num_classes,
            "null_class": self.null_class,
            "latent": self.vae is not None,
            "config": self.config,
            "source": self.source,
        }


def _short_list(names):
    """Every name, with runs of numbered ones folded: 'input_blocks.0..11, middle_block'."""
    out, i = [], 0
    while i < len(names):
        prefix, _, num = names[i].rpartition(".")
        j = i
        while (num.isdigit() and j + 1 < len(names)
               and names[j + 1] == f"{prefix}.{int(num) + j + 1 - i}"):
            j += 1
        out.append(names[i] if j - i < 2 else f"{names[i]}..{names[j].rpartition('.')[2]}")
        if j - i == 1:
            out.append(names[j])
        i = j + 1
    return ", ".join(out)
