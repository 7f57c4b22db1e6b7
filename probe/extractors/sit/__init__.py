"""SiT (Ma et al. 2024) and REPA (Yu et al. 2025): flow-matching transformers.

Weights, in the formats of the original code:

* willisma/SiT: the released ``SiT-XL-2-256x256.pt`` (a bare state dict, ``learn_sigma=True``)
  and ``train.py`` checkpoints (the ``"ema"`` weights are used);
* sihyun-yu/REPA: ``train.py`` checkpoints ``{"model", "ema", "opt", "args", "steps"}``
  (``"ema"``), the released ``last.pt`` (a bare state dict), and the legacy naming with
  ``decoder_blocks.i`` for the blocks after ``encoder_depth`` (mapped as REPA's
  ``utils.load_legacy_checkpoints`` does).

Blocks: ``blocks.0 .. blocks.{depth-1}``, each (B, tokens, hidden_size), and for REPA
``projectors.0 ..`` right after ``blocks.{encoder_depth-1}``, each (B, tokens, z_dim).

Time: continuous t in [0, 1] in the repository's own direction (``schedule.py``):
``convention="sit"`` (t = 1 clean) or ``"repa"`` (t = 0 clean), recorded in every file.
"""
from collections import OrderedDict
from typing import Any

import torch

from .. import weights
from ..dit.extractor import VAE_SCALE, DiTExtractor, latent_input
from .legacy import check_args, from_legacy
from .net import SiT, block_order, describe, resolve_config
from .schedule import CONVENTIONS, InterpolantSchedule


class SiTExtractor(DiTExtractor):
    family = "sit"

    def _block_modules(self):
        return OrderedDict(block_order(self.net))


def create(name: str, spec: dict, checkpoint: Any = None, random_init: bool = False,
           trust_checkpoint: bool = False) -> SiTExtractor:
    """Build a SiT from a registry entry or from constructor arguments (family load).

    ``spec["config"]``: SiT's (and REPA's) arguments, plus ``vae`` (a hub id, a folder,
    ``"random"`` or None for pixel space) and ``convention`` ("sit" or "repa")."""
    given = dict(spec.get("config", {}))
    vae_source = given.pop("vae", spec.get("vae"))
    convention = given.pop("convention", spec.get("convention", "sit"))
    config = resolve_config(given)
    with torch.device("cpu"):  # the schedule holds no tables; kept off the meta device
        schedule = InterpolantSchedule(convention)
    net = SiT(**config)
    source = "random init"
    if not random_init:
        state, source = _weights(name, spec, checkpoint, trust_checkpoint, config)
        weights.load_into(net, state, what=source, arch=describe(name, config))
    vae, vae_source, geometry = latent_input(name, config, vae_source)
    return SiTExtractor(net, name=name, schedule=schedule, vae=vae, vae_scale=VAE_SCALE,
                        config={**config, "vae": vae_source, "convention": convention},
                        source=source, **geometry)


def _weights(name: str, spec: dict, checkpoint: Any, trust: bool,
             config: dict) -> tuple[dict, str]:
    """(state dict in SiT's naming, where it came from)."""
    given = weights.released(name, spec, checkpoint, accepted="a SiT or REPA .pt")
    obj, source = weights.read(given, trust, hint="give a SiT or REPA .pt file or an https:// URL")
    check_args(obj, config, source)
    state = weights.state_dict_from(obj, source)
    return from_legacy(state, config, source), source


__all__ = ["CONVENTIONS", "InterpolantSchedule", "SiT", "SiTExtractor", "create"]
