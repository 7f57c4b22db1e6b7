"""DiT (Peebles & Xie 2023): latent diffusion transformers.

Weights come in two formats and give the same network:

* the original ``facebookresearch/DiT`` format: a ``.pt`` state dict (the released
  ``DiT-XL-2-*.pt``) or a ``train.py`` checkpoint, run by :class:`~.net.DiT`;
* diffusers: a saved ``DiTTransformer2DModel`` or ``DiTPipeline`` folder, or a hub id
  such as ``facebook/DiT-XL-2-256``, run by diffusers itself (:mod:`.diffusers_format`,
  which also loads the VAE).

Blocks are ``blocks.0 .. blocks.{depth-1}`` in forward order for both; each outputs
(B, tokens, hidden_size).  Latent DiTs take images through a diffusers
``AutoencoderKL`` (``Extractor.prepare`` encodes).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import ProbeError
from .. import weights
from ..base import Extractor
from .diffusers_format import DiffusersDiT, hub_weights, load_diffusers, load_vae, looks_like_hub_id, model_subfolder, to_diffusers, vae_label
from .net import DEFAULTS, DiT, check_keys, describe, resolve_config
from ..schedules import DDPMSchedule

VAE_SCALE = 0.18215
_NO_VAE_GIVEN = object()


class DiTExtractor(Extractor):
    family = "dit"

    def _block_modules(self):
        return OrderedDict((f"blocks.{i}", b) for i, b in enumerate(self.net.blocks))

    def _forward(self, x, t, y):
        self._check_input(x, y)
        return self.net(x, t, y)

    def _check_input(self, x, y):
        c, s = self.config["in_channels"], self.config["input_size"]
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            what = f"latents of {self.image_size}px images" if self.vae is not None else "images"
            raise ProbeError(f"{self.name} takes inputs (B, {c}, {s}, {s}) ({what}; "
                             f"Extractor.prepare makes them); got {tuple(x.shape)}")
        if y is None or y.device.type == "meta" or not y.numel():
            return
        top = self.num_classes if self.null_class is None else self.null_class + 1
        if int(y.min()) < 0 or int(y.max()) >= top:
            null = "" if self.null_class is None else f", {self.null_class} = null class"
            raise ProbeError(f"class label out of range for {self.name}: use 0..{top - 1} "
                             f"(ImageNet class indices{null})")


# ---- building a model ---------------------------------------------------------------------

def create(name: str, spec: Mapping[str, Any], checkpoint: Any = None, random_init: bool = False,
           trust_checkpoint: bool = False) -> DiTExtractor:
    """Build a DiT from a registry entry or from constructor arguments (family load).

    ``spec["config"]`` holds DiT's arguments plus optionally ``vae``: a hub id, a local
    folder, ``"random"`` or None (pixel space).  By default a registry entry uses its
    ``vae``, a DiTPipeline checkpoint its own, and a family load none.
    """
    given = dict(spec.get("config", {}))
    vae_source = given.pop("vae", _NO_VAE_GIVEN)
    check_keys(given)
    located = _locate_weights(name, spec, checkpoint, random_init)
    net: DiT | DiffusersDiT
    if located["kind"] in ("folder", "hub"):
        net, config = load_diffusers(located, name, given)
    else:
        config = resolve_config(given)
        net = DiT(**config)
        if located["kind"] == "state":
            state, _ = weights.read_state_dict(located["checkpoint"], trust_checkpoint)
            weights.load_into(net, state, what=located["source"], arch=describe(name, config))

    vae_subfolder = None
    if vae_source is _NO_VAE_GIVEN:
        vae_source, vae_subfolder = located.get("vae") or (spec.get("vae"), None)
    vae, vae_source, geometry = latent_input(name, config, vae_source, vae_subfolder)
    # The schedule's tables stay real even when the net is built on the meta device.
    with torch.device("cpu"):
        schedule = DDPMSchedule(spec.get("schedule", "linear"), 1000)
    return DiTExtractor(net, name=name, schedule=schedule, vae=vae, vae_scale=VAE_SCALE,
                        config={**config, "vae": vae_source}, source=located["source"],
                        **geometry)


def latent_input(name: str, config: Mapping[str, Any], vae_source: Any,
                 vae_subfolder: str | None = None) -> tuple[Any, str | None, dict[str, Any]]:
    """The VAE of a DiT-shaped network (DiT, SiT) and what the extractor is told about its
    input: (vae or None, its label, {image_size, image_channels, num_classes,
    null_class}).  A VAE whose latents do not fit ``in_channels`` is a one-line error."""
    vae = load_vae(vae_source, vae_subfolder)
    label = vae_label(vae_source, vae_subfolder) if vae is not None else None
    if vae is not None and vae.config.latent_channels != config["in_channels"]:
        raise ProbeError(f"the VAE {label} makes {vae.config.latent_channels}-channel "
                         f"latents but {name} takes in_channels={config['in_channels']}")
    conditional = config["num_classes"] > 0
    has_null = conditional and config["class_dropout_prob"] > 0
    if vae is None:
        image_size, image_channels = config["input_size"], config["in_channels"]
    else:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        image_size, image_channels = config["input_size"] * factor, vae.config.in_channels
    return vae, label, dict(image_size=image_size, image_channels=image_channels,
                            num_classes=config["num_classes"] if conditional else None,
                            null_class=config["num_classes"] if has_null else None)


# ---- where the weights are ----------------------------------------------------------------

def _locate_weights(name, spec, checkpoint, random_init):
    """Work out where the weights come from without fetching them yet (so a missing
    checkpoint is reported before a VAE download).  Returns a dict with kind
    random | state (a state dict, a file or a URL, read by ``weights.read``) | folder | hub,
    the source, and a pipeline's own VAE."""
    if random_init:
        return dict(kind="random", source="random init")
    if checkpoint is None and spec.get("hub") and not spec.get("url"):
        return hub_weights(spec["hub"])
    checkpoint = weights.released(name, spec, checkpoint, "a DiT .pt or train.py checkpoint, "
                                  "or a diffusers folder")
    if isinstance(checkpoint, Mapping):
        return dict(kind="state", source="state dict", checkpoint=checkpoint)
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        path = os.path.abspath(path)
        sub = model_subfolder(path, "transformer")
        has_vae = sub and os.path.exists(os.path.join(path, "vae", "config.json"))
        return dict(kind="folder", source=path, subfolder=sub,
                    vae=(os.path.join(path, "vae"), None) if has_vae else None)
    if os.path.exists(path) or weights.is_url(path):
        source = path if weights.is_url(path) else os.path.abspath(path)
        return dict(kind="state", source=source, checkpoint=source)
    if looks_like_hub_id(path):
        return hub_weights(path)
    raise ProbeError(f"checkpoint not found: {path} (give a DiT .pt file, a diffusers folder, "
                     "or a hub id such as facebook/DiT-XL-2-256)")


__all__ = ["DEFAULTS", "DiTExtractor", "DiffusersDiT", "VAE_SCALE", "create", "load_vae",
           "resolve_config", "to_diffusers"]
