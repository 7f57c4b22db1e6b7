"""Latent denoising autoencoders (l-DAE; Chen, Liu, Xie & He 2024), built for probing.

The network is a DiT without class conditioning, built from DiT's own block, final layer
and timestep embedder (``dit/net.py``): patch embedding, fixed 2-D sin-cos positions,
``depth`` blocks with adaLN-Zero timestep conditioning, and a linear head back to
pixels.  Two details are its own, and the trained weights depend on them: timm's
position table (a different channel layout from DiT's) and the patch layout of the
output (channel-major, like the tokenizer's).  The first ``encoder_depth`` blocks are
the encoder (probed), the rest the decoder.

The tokenizer (``tokenizer.py``, ``convvae.py``) is patch-wise PCA fitted on training patches (the
default), a patch-wise linear AE or VAE, or a small convolutional VAE; it is a frozen
submodule of the network, so a checkpoint carries it.  Noise lives in its latent of
``latent_dim`` numbers per patch: with PCA the network sees
``mean + V^T (gamma_t V (x - mean) + sigma_t eps)``, in general
``decode(gamma_t encode(x) + sigma_t eps)`` (``net_input="projected"``, the inverse
projection) or the noisy latent itself (``net_input="latent"``).  The network always
predicts pixels: the original image (``net_output="original"``, the final recipe) or the
image as the tokenizer keeps it (``"projected"``).  With ``noise_space="pixel"`` it is
the classical DAE: ``gamma_t x + sigma_t eps`` with no tokenizer.

Checkpoints (written by ``probe train ldae``) hold only plain types, so they load with
``torch.load(weights_only=True)``::

    {"format": "probe-ldae", "version": 3, "config": {...}, "model": state_dict,
     "meta": {...how it was trained, "tokenizer": how the tokenizer was...}}

Older versions load too: version 2 configs have no tokenizer keys (their defaults, PCA
and the final recipe, are what they were trained with), and version 1 checkpoints (the
shipped ``ldae-fmnist`` and ``dae-pixel-fmnist``) also have the old timestep-MLP names,
which :func:`upgrade_state_dict` renames.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from torch import nn

from ...errors import ProbeError
from ..base import Extractor
from .. import weights
from ..dit.net import DiTBlock, FinalLayer, TimestepEmbedder, as_linear
from .config import DEFAULTS, patch_dim, read_options, validate_config  # noqa: F401 (API)
from .tokenizer import PatchPCA, make_tokenizer, patchify, unpatchify
from ..schedules import LDAESchedule

FORMAT = "probe-ldae"
# 2: the timestep MLP is DiT's TimestepEmbedder (``t_embedder.mlp.0/2``); version 1 ran
# it as diffusers' TimestepEmbedding (``t_embedder.linear_1/2``), see upgrade_state_dict.
# 3: the config names the tokenizer (``tokenizer``, ``tokenizer_width``) and the pixel-side
# variant (``net_input``, ``net_output``); absent from older configs = PCA, final recipe.
VERSION = 3


# ---- the network --------------------------------------------------------------------------
class LDAENet(nn.Module):
    """The denoiser: noisy image (B, C, S, S) and timestep (B,) -> prediction (B, C, S, S)."""

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        dim, p, s = c["hidden_size"], c["patch_size"], c["image_size"]
        if c["net_input"] == "latent":  # the noisy latent map (d, S/p, S/p), one token per cell
            self.x_embedder = PatchEmbed(s // p, 1, c["latent_dim"], dim)
        else:
            self.x_embedder = PatchEmbed(s, p, c["in_channels"], dim)
        self.register_buffer("pos_embed", build_sincos2d_pos_embed([s // p, s // p], dim)[None],
                             persistent=False)  # fixed, rebuilt from the config
        self.t_embedder = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, c["num_heads"], c["mlp_ratio"])
                                    for _ in range(c["depth"]))
        self.final_layer = FinalLayer(dim, p, c["in_channels"])
        self.tokenizer = make_tokenizer(c)
        if self.tokenizer is not None:
            self.tokenizer.requires_grad_(False)  # trained first (or fitted), then frozen
        self._init_weights()
        # `probe train --resume` loads a run's saved state directly, not through
        # read_checkpoint: a run begun before version 2 has the old names.
        self._register_load_state_dict_pre_hook(
            lambda state, prefix, *_: upgrade_state_dict(state, prefix))

    def _init_weights(self):
        # DiT's initialisation: xavier everywhere, and every residual branch and the
        # output start at zero, so the untrained network is the identity on its tokens.
        frozen = set(self.tokenizer.modules()) if self.tokenizer is not None else set()
        for m in self.modules():
            if isinstance(m, nn.Linear) and m not in frozen:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(as_linear(lin).weight, std=0.02)
        for m in [as_linear(b.adaLN_modulation[-1]) for b in self.modules()
                  if isinstance(b, (DiTBlock, FinalLayer))] + [self.final_layer.linear]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.final_layer(tokens, c)
        s = self.config["image_size"]
        return unpatchify(out, self.config["patch_size"], self.config["in_channels"], s, s)


# ---- the extractor ----------------------------------------------------------------------------
class LDAEExtractor(Extractor):
    family = "ldae"
    tokenizer_meta: dict[str, Any] | None  # set by probe.train.ldae.build

    def __init__(self, net, *, name, source=None):
        cfg = net.config
        mixer = _LatentInput() if cfg["net_input"] == "latent" else net.tokenizer
        super().__init__(net, name=name, schedule=LDAESchedule(cfg, mixer),
                         image_size=cfg["image_size"], image_channels=cfg["in_channels"],
                         config=cfg, source=source)

    def _block_modules(self):
        return {f"blocks.{i}": b for i, b in enumerate(self.net.blocks)}

    def _forward(self, x, t, y):
        return self.net(x, t)

    @property
    def encoder_blocks(self) -> list[str]:
        return self.block_names[: self.config["encoder_depth"]]

    @property
    def decoder_blocks(self) -> list[str]:
        return self.block_names[self.config["encoder_depth"]:]

    @property
    def encoder_output(self) -> str:
        """The block the paper probes: the last encoder block."""
        return self.encoder_blocks[-1]

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> [-1, 1], with nothing removed (the training target)."""
        return images * 2.0 - 1.0

    @property
    def input_pipeline(self) -> str:
        tok, cfg = self.net.tokenizer, self.config
        if tok is None:
            return "to [-1,1]"
        if cfg["net_input"] == "latent":
            return f"to [-1,1], encoded by the l-DAE's {tok.kind} tokenizer (its latent map)"
        if tok.kind == "pca":
            return "to [-1,1], kept to its first d PCA components per patch (the l-DAE tokenizer)"
        return f"to [-1,1], encoded and decoded by the l-DAE's {tok.kind} tokenizer"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        cfg = self.config
        if cfg["net_input"] == "latent":
            side = cfg["image_size"] // cfg["patch_size"]
            return (cfg["latent_dim"], side, side)
        return super().input_shape

    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the clean network input: [-1, 1], and for latent noise the
        image as the tokenizer keeps it (PCA: its first d components per patch), which is
        what the network sees at sigma = 0 during training; with ``net_input="latent"``
        the latent map itself, (B, d, S/p, S/p)."""
        return self.clean_input(self.to_pixels(images))

    def clean_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> the clean network input (see :meth:`prepare`)."""
        tok = self.net.tokenizer
        if tok is None:
            return x
        if self.config["net_input"] == "latent":
            return latent_map(tok.encode(x))
        return tok.project(x)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, t: int | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """The paper's probe features: mean-pooled encoder output, (B, hidden_size).
        Clean input conditioned on t (default: 1 % of the schedule, the paper's 10 of 1000);
        pass ``noise`` to noise the input to t first."""
        t = round(0.01 * self.num_timesteps) if t is None else t
        x = self.prepare(images)
        if noise is not None:
            x = self.q_sample(x, t, noise)
        out = self.forward_intermediates(x, t, [self.encoder_output])[self.encoder_output]
        return out.mean(dim=1)

    def checkpoint(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint contents ``load_model("ldae", checkpoint=...)`` reads."""
        state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        return {"format": FORMAT, "version": VERSION, "config": dict(self.config),
                "model": state, "meta": dict(meta or {})}


def latent_map(tokens: torch.Tensor) -> torch.Tensor:
    """Latent tokens (B, N, d) -> the map (B, d, sqrt N, sqrt N), tokens in row-major order."""
    b, n, d = tokens.shape
    side = math.isqrt(n)
    return tokens.transpose(1, 2).reshape(b, d, side, side)


class _LatentInput:
    """The schedule's mixing when the network reads the latent map itself: the input is
    already the latent, so the noise is added to it directly."""

    def mix(self, x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor,
            sigma: torch.Tensor) -> torch.Tensor:
        return gamma.reshape(-1, 1, 1, 1) * x0 + sigma.reshape(-1, 1, 1, 1) * noise

    def project_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return noise


def build(config: Mapping[str, Any], name: str = "ldae",
          source: str | None = None) -> LDAEExtractor:
    """A freshly initialised l-DAE (identity tokenizer until a PCA basis is set)."""
    return LDAEExtractor(LDAENet(validate_config(config)), name=name, source=source)


def read_checkpoint(path: Any, trust_checkpoint: bool = False
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint file (or its loaded contents) -> (config, state dict, meta)."""
    obj, path = weights.read(path, trust_checkpoint, hint="give a checkpoint from `probe train "
                             "ldae`")
    path = "the checkpoint" if path == "state dict" else path
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT and "config" in obj):
        raise ProbeError(f"{path} is not an l-DAE checkpoint (no 'format': '{FORMAT}' entry); "
                         "train one with `probe train ldae`")
    if obj.get("version", 0) > VERSION:
        raise ProbeError(f"{path} was written by a newer probe (l-DAE checkpoint version "
                         f"{obj['version']}): upgrade probe")
    state = upgrade_state_dict(dict(weights.state_dict_from(obj, path)))
    return dict(obj["config"]), state, dict(obj.get("meta") or {})


# Checkpoint version 1 -> 2: diffusers' TimestepEmbedding -> DiT's TimestepEmbedder, the
# same two linear layers under other names.
_V1_NAMES = {"t_embedder.linear_1.": "t_embedder.mlp.0.",
             "t_embedder.linear_2.": "t_embedder.mlp.2."}


def upgrade_state_dict(state: dict[str, torch.Tensor], prefix: str = ""
                       ) -> dict[str, torch.Tensor]:
    """Rename the keys of l-DAE weights saved before checkpoint version 2 (under
    ``prefix``) to today's module names, in place, and return ``state``.  Newer weights
    pass through unchanged.  The saved files themselves are never rewritten."""
    for old, new in _V1_NAMES.items():
        for key in [k for k in state if k.startswith(prefix + old)]:
            state[prefix + new + key[len(prefix + old):]] = state.pop(key)
    return state


def create(name: str, spec: Mapping[str, Any], checkpoint: Any = None, random_init: bool = False,
           trust_checkpoint: bool = False) -> LDAEExtractor:
    """Registry hook (``load_model`` resolves a shipped model's file to ``checkpoint``).
    The config comes from the checkpoint; ``spec['config']`` may only repeat it."""
    overrides = {k: v for k, v in (spec.get("config") or {}).items() if v is not None}
    if random_init and spec.get("file"):
        from ..registry import shipped_weights

        return _untrained_like(name, shipped_weights(spec["file"]), overrides)
    if random_init:
        return build(overrides, name=name, source="random init")
    checkpoint = weights.released(name, spec, checkpoint, "a checkpoint from `probe train ldae`")
    config, state, _ = read_checkpoint(checkpoint, trust_checkpoint)
    typed = read_options(overrides)  # "4" from a shell repeats depth=4
    clash = {k: typed[k] for k in overrides if k in config and config[k] != typed[k]}
    if clash:
        k = next(iter(clash))
        raise ProbeError(f"the checkpoint was trained with {k}={config[k]!r}, not {clash[k]!r}: "
                         "an l-DAE's config comes from its checkpoint, drop that option")
    source = "checkpoint contents" if isinstance(checkpoint, dict) else str(checkpoint)
    model = build({**config, **overrides}, name=name, source=source)
    weights.load_into(model.net, state, what=source, arch="the l-DAE its config describes")
    return model


def _untrained_like(name, checkpoint, overrides):
    """The random-init baseline of a trained l-DAE: its architecture and its tokenizer
    (fitted or trained before the network, and frozen), a fresh network."""
    config, state, _ = read_checkpoint(checkpoint)
    model = build({**config, **overrides}, name=name, source="random init")
    if model.net.tokenizer is not None:
        prefix = "tokenizer."
        weights.load_into(model.net.tokenizer, {k[len(prefix):]: v for k, v in state.items()
                                        if k.startswith(prefix)},
                  what=f"the tokenizer of {checkpoint}", arch="the tokenizer its config names")
    return model


__all__ = ["DEFAULTS", "LDAEExtractor", "LDAENet", "LDAESchedule", "PatchPCA", "build",
           "create", "latent_map", "patchify", "unpatchify", "validate_config",
           "read_checkpoint", "upgrade_state_dict"]
