"""guided-diffusion ADM U-Nets: flags, weights and blocks.

A model is described by guided-diffusion's own command-line flags (``MODEL_FLAGS``
and ``DIFFUSION_FLAGS`` of its README); flags left out take the defaults of its
scripts (``model_and_diffusion_defaults``).  Blocks are the U-Net's
``input_blocks.i``, ``middle_block`` and ``output_blocks.i`` in forward order.
"""
from __future__ import annotations

import shlex
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import ProbeError
from .. import weights
from .unet import unet_from_flags
from ..base import Extractor
from ..config import read_config
from ..schedules import DDPMSchedule

# guided-diffusion's script defaults (model_and_diffusion_defaults), i.e. what a
# flag means when MODEL_FLAGS leaves it out.
MODEL_FLAGS = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
    num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
    class_cond=False, use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False,
    use_fp16=False, use_new_attention_order=False, learn_sigma=False,
)
DIFFUSION_FLAGS = dict(
    diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
)
DEFAULTS = {**MODEL_FLAGS, **DIFFUSION_FLAGS}


class ADMExtractor(Extractor):
    family = "adm"
    prefers_channels_last = True
    any_image_size = True

    def __init__(self, net, *, rescale_timesteps=False, **kwargs):
        super().__init__(net, **kwargs)
        # Models trained with rescale_timesteps saw t scaled to [0, 1000).
        self.rescale_timesteps = rescale_timesteps

    def _block_modules(self):
        blocks = OrderedDict(
            (f"input_blocks.{i}", b) for i, b in enumerate(self.net.input_blocks))
        blocks["middle_block"] = self.net.middle_block
        blocks.update((f"output_blocks.{i}", b) for i, b in enumerate(self.net.output_blocks))
        return blocks

    def _forward(self, x, t, y):
        self._check_input(x, y)
        if self.rescale_timesteps:
            t = t.float() * (1000.0 / self.num_timesteps)
        return self.net(x, t, y)

    def _check_input(self, x, y):
        f = self.net.downsampling
        if x.dim() != 4 or x.shape[1] != self.image_channels or x.shape[-1] % f or x.shape[-2] % f:
            raise ProbeError(
                f"{self.name} takes images (B, {self.image_channels}, H, W) with H and W "
                f"multiples of {f} (it was trained at {self.image_size}px); "
                f"got {tuple(x.shape)}")
        if y is not None and y.device.type != "meta" and y.numel() and not (
                0 <= int(y.min()) and int(y.max()) < self.num_classes):
            raise ProbeError(f"class label out of range for {self.name}: "
                             f"use 0..{self.num_classes - 1} (ImageNet class indices)")


def parse_flags(text: str) -> dict[str, str]:
    """Flags as pasted from guided-diffusion's README (``"--image_size 256 --class_cond
    True ..."``, several strings may be joined) -> a dict for ``load_model("adm", **flags)``."""
    tokens = shlex.split(text)
    flags = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ProbeError(f"cannot read flag {token!r}: expected '--name value'")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise ProbeError(f"flag --{key} has no value")
            value = tokens[i + 1]
            i += 1
        flags[key] = value
        i += 1
    return flags


def resolve_flags(config: Mapping[str, Any]) -> dict[str, Any]:
    """User config -> complete, typed flags.  Values may be strings, as from a shell."""
    return read_config(config, DEFAULTS, "ADM flag", "ADM takes guided-diffusion's model and "
                       f"diffusion flags: {', '.join(DEFAULTS)}")


def create(name: str, spec: Mapping[str, Any], checkpoint: Any = None, random_init: bool = False,
           trust_checkpoint: bool = False) -> ADMExtractor:
    """Build an ADM from a registry entry or from flags (family load) and load its weights."""
    config = dict(spec.get("config", {}))
    flags = resolve_flags(config)
    net = unet_from_flags(flags)
    # The schedule's tables stay real even when the caller builds the net on the meta device.
    with torch.device("cpu"):
        schedule = DDPMSchedule(config.get("noise_schedule", spec.get("schedule", "linear")),
                                flags["diffusion_steps"])
    source = None if random_init else _load_weights(
        net, name, spec, checkpoint, trust_checkpoint, flags)
    return ADMExtractor(
        net, name=name, schedule=schedule, image_size=flags["image_size"],
        num_classes=net.num_classes, null_class=None, config=config, source=source,
        rescale_timesteps=flags["rescale_timesteps"])


def _load_weights(net, name, spec, checkpoint, trust_checkpoint, flags):
    """Fill ``net`` from the checkpoint (or the entry's released URL); return the source."""
    checkpoint = weights.released(name, spec, checkpoint, "a guided-diffusion .pt file")
    state, source = weights.read_state_dict(checkpoint, trust_checkpoint)
    arch = (f"the ADM U-Net of {name} (image_size={flags['image_size']}, "
            f"num_channels={flags['num_channels']}, class_cond={flags['class_cond']})")
    weights.load_into(net, state, what=source, arch=arch)
    return source
