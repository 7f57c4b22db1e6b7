"""DiT weights in diffusers' format, and the VAE of latent DiTs.

diffusers keeps a DiT as a ``DiTTransformer2DModel`` (a saved folder, a ``DiTPipeline``
folder, or a hub id such as ``facebook/DiT-XL-2-256``).  :class:`DiffusersDiT` runs one
behind the original's call, :func:`to_diffusers` converts original-format weights to
it, and :func:`load_vae` loads the ``AutoencoderKL`` that latent DiTs encode images with.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from contextlib import contextmanager

import torch
from torch import nn

from ...errors import ProbeError
from .. import weights
from ..base import Extractor
from ..config import read_config
from .net import DEFAULTS, describe, resolve_config, sincos_pos_embed

# The Stable Diffusion VAE's shape (sd-vae-ft-ema / -mse), for vae="random".
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512), sample_size=256,
              down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)

_DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


class DiffusersDiT(nn.Module):
    """A diffusers ``DiTTransformer2DModel`` behind the original's call: ``net(x, t, y)``
    returns the output tensor, and ``net.blocks`` are its transformer blocks.

    diffusers' port differs from the DiT the weights were trained with in two details:
    its timestep frequencies are exp(-ln(1e4) i/127) instead of i/128, and the LayerNorm
    before the MLP uses eps 1e-5 instead of 1e-6.  Both are set back to the original, so
    a checkpoint gives the same features in either format.
    """

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        for block in transformer.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
            block.norm3.eps = 1e-6

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.transformer_blocks

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformer(x, timestep=t, class_labels=y, return_dict=False)[0]


# ---- hub ids and folders ---------------------------------------------------------------------

def looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith(".") and \
        not text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def model_subfolder(folder: str, sub: str) -> str | None:
    """None if ``folder`` itself holds a model config, ``sub`` if its subfolder does."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return None
    if os.path.exists(os.path.join(folder, sub, "config.json")):
        return sub
    raise ProbeError(f"{folder} is not a diffusers model folder: expected config.json or "
                     f"{sub}/config.json (save_pretrained writes them)")


def hub_weights(repo_id: str) -> dict[str, Any]:
    folder = weights.hub_snapshot(repo_id, _HUB_CONFIGS)
    sub = model_subfolder(folder, "transformer")
    has_vae = sub is not None and os.path.exists(os.path.join(folder, "vae", "config.json"))
    return dict(kind="hub", source=repo_id, repo=repo_id, subfolder=sub,
                vae=(repo_id, "vae") if has_vae else None)


# Fetched up front: offline this fails at once, where from_pretrained retries for half a minute.
_HUB_CONFIGS = ["model_index.json", "config.json", "transformer/config.json", "vae/config.json"]


def _from_pretrained(cls, where, subfolder, error):
    """cls.from_pretrained, trying the local cache first so a cached model needs no network."""
    kwargs = dict(subfolder=subfolder) if subfolder else {}
    if not os.path.isdir(where):
        try:
            return cls.from_pretrained(where, local_files_only=True, **kwargs)
        except Exception:  # not cached (completely): fetch it
            pass
    return weights.fetched(lambda: cls.from_pretrained(where, **kwargs), where, error)


# ---- diffusers weights -------------------------------------------------------------------

def load_diffusers(located: Mapping[str, Any], name: str, given: Mapping[str, Any]
                   ) -> tuple[DiffusersDiT, dict[str, Any]]:
    """The DiT that ``located`` (a folder or hub id, see ``extractor._locate_weights``) holds, as
    ``(DiffusersDiT, its config in the original's arguments)``; ``given`` arguments must
    agree with it."""
    from diffusers import DiTTransformer2DModel

    where = located.get("repo", located["source"])
    folder = located["kind"] == "folder"
    if folder:
        _check_class(where, located["subfolder"])
    # a hub id that fails to load is weights.fetched's "could not fetch weights"
    error = (lambda e: ProbeError(f"cannot load a diffusers DiT from {where}: "
                                  f"{weights.first_line(e)}")) if folder else None

    pos = _saved_pos_embed(where, located["subfolder"]) if folder else None
    with _quiet_diffusers(pos is not None):  # it would warn that it skips the saved table
        transformer = _from_pretrained(DiTTransformer2DModel, where, located["subfolder"], error)
    if pos is not None:
        transformer.pos_embed.pos_embed.copy_(pos)
    config = config_from_diffusers(transformer.config)
    typed = read_config(given, DEFAULTS, "DiT argument")
    wrong = [f"{k}={config[k]} (not {given[k]})" for k in given if k != "class_dropout_prob"
             and config[k] != typed[k]]
    if wrong:
        raise ProbeError(f"{located['source']} does not fit {name}: it is a DiT with "
                         f"{', '.join(wrong)}; use the family 'dit' to take its own config")
    return DiffusersDiT(transformer), config


def _check_class(folder, subfolder):
    import json

    path = os.path.join(folder, subfolder or "", "config.json")
    with open(path) as fh:
        cls = json.load(fh).get("_class_name")
    if cls not in _DIFFUSERS_CLASSES:
        raise ProbeError(f"{path} describes a {cls}, not a DiT transformer "
                         "(DiTTransformer2DModel)")


def config_from_diffusers(c: Any) -> dict[str, Any]:
    """A DiTTransformer2DModel config -> the original DiT's constructor arguments."""
    out_channels = c.out_channels or c.in_channels
    return dict(
        input_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels,
        hidden_size=c.num_attention_heads * c.attention_head_dim, depth=c.num_layers,
        num_heads=c.num_attention_heads, mlp_ratio=4.0,
        # diffusers always keeps the null-class row; the dropout rate itself is not saved.
        class_dropout_prob=DEFAULTS["class_dropout_prob"],
        num_classes=c.num_embeds_ada_norm, learn_sigma=out_channels == 2 * c.in_channels)


_POS_KEY = "pos_embed.pos_embed"


def _saved_pos_embed(folder, subfolder):
    """diffusers rebuilds the fixed sin-cos position table instead of saving it; a table
    that is not that one is saved by :func:`to_diffusers` and read back here."""
    from safetensors import safe_open

    path = os.path.join(folder, subfolder or "", "diffusion_pytorch_model.safetensors")
    if not os.path.exists(path):
        return None
    with safe_open(path, framework="pt") as f:
        return f.get_tensor(_POS_KEY) if _POS_KEY in f.keys() else None


@contextmanager
def _quiet_diffusers(quiet):
    from diffusers.utils import logging

    level = logging.get_verbosity()
    if quiet:
        logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# Original DiT name -> diffusers name.  diffusers keeps a copy of the timestep and class
# embedders in every block, and splits the fused qkv projection.
_TOP = {"x_embedder.proj": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
        "final_layer.linear": "proj_out_2"}
_SHARED = {"t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
           "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
           "y_embedder.embedding_table": "norm1.emb.class_embedder.embedding_table"}
_BLOCK = {"adaLN_modulation.1": "norm1.linear", "attn.proj": "attn1.to_out.0",
          "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2"}


def to_diffusers(model: Any, config: Mapping[str, Any] | None = None) -> Any:
    """Original-format DiT weights -> a diffusers ``DiTTransformer2DModel``, e.g. to
    ``save_pretrained`` them.  ``model`` is a DiT extractor (its config is used), or a
    :class:`~.net.DiT` or a state dict with ``config`` its DiT arguments.  Loaded back
    with ``load_model``, the result gives the same outputs and block features."""
    from diffusers import DiTTransformer2DModel

    if isinstance(model, Extractor):
        if isinstance(model.net, DiffusersDiT):
            return model.net.transformer
        config = config or model.config
        state = model.net.state_dict()
    elif isinstance(model, nn.Module):
        state = model.state_dict()
    else:
        state = weights.state_dict_from(model, "the state dict")
    if config is None:
        raise ProbeError("to_diffusers needs the DiT config of a bare state dict")
    c = resolve_config({k: v for k, v in config.items() if k != "vae"})
    if c["num_classes"] == 0 or c["class_dropout_prob"] <= 0 or c["mlp_ratio"] != 4.0:
        raise ProbeError("diffusers' DiT only has class-conditional models with a null class "
                         "and mlp_ratio 4: keep this one in the original format")
    heads = c["num_heads"]
    transformer = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=c["hidden_size"] // heads,
        in_channels=c["in_channels"], out_channels=c["in_channels"] * (1 + c["learn_sigma"]),
        num_layers=c["depth"], sample_size=c["input_size"], patch_size=c["patch_size"],
        num_embeds_ada_norm=c["num_classes"], norm_eps=1e-6)
    out = _rename_state(state, c["depth"])
    standard = sincos_pos_embed(c["hidden_size"], c["input_size"] // c["patch_size"])[None]
    pos = out.pop("pos_embed", standard)
    if pos.shape != standard.shape:
        out["pos_embed"] = pos  # load_into names the misfit
    elif not torch.allclose(pos.float(), standard, atol=1e-6):
        # Not the fixed table diffusers would rebuild: save it along (see _saved_pos_embed).
        transformer.pos_embed.register_buffer("pos_embed", pos.clone(), persistent=True)
        out[_POS_KEY] = pos
    weights.load_into(transformer, out, what="the DiT state dict",
                          arch=f"diffusers' DiTTransformer2DModel for {describe('it', c)}")
    return transformer


def _rename_state(state, depth):
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _TOP:
            out[f"{_TOP[module]}.{param}"] = value
        elif module in _SHARED:
            for i in range(depth):
                out[f"transformer_blocks.{i}.{_SHARED[module]}.{param}"] = value
        elif module.startswith("blocks."):
            _, i, rest = module.split(".", 2)
            prefix = f"transformer_blocks.{i}."
            if rest == "attn.qkv":
                for part, v in zip(("to_q", "to_k", "to_v"), value.chunk(3)):
                    out[f"{prefix}attn1.{part}.{param}"] = v
            else:
                out[prefix + f"{_BLOCK.get(rest, rest)}.{param}"] = value
        else:  # pos_embed, or a stray key that load_into reports
            out[key] = value
    return out


# ---- the VAE ---------------------------------------------------------------------------------

def load_vae(source: Any, subfolder: str | None = None) -> Any:
    """A diffusers AutoencoderKL from a hub id or local folder; ``"random"`` for an
    untrained one of the SD-VAE's shape; None (or "none") for no VAE: a pixel-space DiT."""
    if source is None or source == "none":
        return None
    from diffusers import AutoencoderKL

    if source == "random":
        return AutoencoderKL(**SD_VAE)

    def error(e):
        return ProbeError(
            f"could not load the VAE {vae_label(source, subfolder)} "
            f"({weights.first_line(e)}): download it on a machine with internet and pass "
            "its folder (--vae FOLDER, API vae=...), or use --vae random (API vae='random') "
            "for an untrained one")

    source = os.fspath(source)
    if os.path.isdir(source):
        subfolder = subfolder or model_subfolder(source, "vae")
    elif looks_like_hub_id(source):
        if subfolder is None:
            subfolder = model_subfolder(weights.hub_snapshot(source, _HUB_CONFIGS, error), "vae")
    else:
        raise ProbeError(f"VAE not found: {source} (give a hub id such as "
                         "stabilityai/sd-vae-ft-ema, a saved AutoencoderKL folder, or 'random')")
    return _from_pretrained(AutoencoderKL, source, subfolder, error)


def vae_label(source: Any, subfolder: str | None) -> str | None:
    if source is None:
        return None
    return f"{os.fspath(source)}/{subfolder}" if subfolder else os.fspath(source)


__all__ = ["DiffusersDiT", "SD_VAE", "config_from_diffusers", "load_diffusers", "load_vae",
           "to_diffusers"]
