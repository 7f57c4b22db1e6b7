"""Latent denoising autoencoders (l-DAE; Chen, Liu, Xie & He 2024), built for probing.

The network is a DiT without class conditioning, built from DiT's own block, final layer
and timestep embedder (``dit_net``): patch embedding, fixed 2-D sin-cos positions,
``depth`` blocks with adaLN-Zero timestep conditioning, and a linear head back to
pixels.  Two details are its own, and the trained weights depend on them: timm's
position table (a different channel layout from DiT's) and the patch layout of the
output (channel-major, like the tokenizer's).  The first ``encoder_depth`` blocks are
the encoder (probed), the rest the decoder.

The tokenizer (``ldae_tokenizer``) is patch-wise PCA fitted on training patches; its
mean and full basis are buffers of the network, so a checkpoint carries them.  Noise
lives in the first ``latent_dim`` PCA coordinates of each patch: the network sees
``mean + V^T (gamma_t V (x - mean) + sigma_t eps)``.  With ``noise_space="pixel"`` it
is the classical DAE: ``gamma_t x + sigma_t eps`` with no tokenizer.

Checkpoints (written by ``probe train ldae``) hold only plain types, so they load with
``torch.load(weights_only=True)``::

    {"format": "probe-ldae", "version": 2, "config": {...}, "model": state_dict,
     "meta": {...how it was trained...}}

Version 1 checkpoints (the shipped ``ldae-fmnist`` and ``dae-pixel-fmnist``, and
``probe train ldae`` runs before version 2) load too: :func:`upgrade_state_dict`
renames their keys.
"""
import math

import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from torch import nn

from ..errors import ProbeError, suggest
from .base import Extractor
from .checkpoints import load_file, load_into, state_dict_from
from .config import coerce
from .dit_net import DiTBlock, FinalLayer, TimestepEmbedder
from .ldae_tokenizer import PatchPCA, patchify, unpatchify
from .schedules import LDAESchedule

FORMAT = "probe-ldae"
# 2: the timestep MLP is DiT's TimestepEmbedder (``t_embedder.mlp.0/2``); version 1 ran
# it as diffusers' TimestepEmbedding (``t_embedder.linear_1/2``), see upgrade_state_dict.
VERSION = 2
NOISE_SPACES = ("latent", "pixel")
SCHEDULES = ("sigma-linear", "gamma2-linear")
TARGETS = ("clean", "noise")
LOSS_WEIGHTS = ("sigma", "none")

DEFAULTS = dict(
    # architecture
    image_size=32, in_channels=1, patch_size=4, hidden_size=192, depth=6, num_heads=3,
    mlp_ratio=4.0, encoder_depth=None,          # None: the first half of the blocks
    # noise (used by q_sample / prepare, hence part of the model)
    noise_space="latent", latent_dim=None,      # None: a quarter of the patch dimension
    schedule="sigma-linear", sigma_max=math.sqrt(2), num_timesteps=1000,
    # training objective (recorded so a checkpoint says how it was made)
    target="clean", residual_weight=0.1, loss_weight="sigma", single_t=None,
)


def patch_dim(config):
    return config["in_channels"] * config["patch_size"] ** 2


def validate_config(config):
    """Fill defaults, type and check a config; every user mistake is a one-line ProbeError."""
    c = _typed(config)
    for key, choices in (("noise_space", NOISE_SPACES), ("schedule", SCHEDULES),
                         ("target", TARGETS), ("loss_weight", LOSS_WEIGHTS)):
        if c[key] not in choices:
            raise ProbeError(f"ldae {key} must be one of {', '.join(choices)}, not {c[key]!r}")
    for key in ("image_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads",
                "num_timesteps"):
        if c[key] < 1:
            raise ProbeError(f"ldae {key} must be a positive integer, not {c[key]!r}")
    s, p = c["image_size"], c["patch_size"]
    if s % p:
        raise ProbeError(f"image size {s} is not divisible by patch size {p}: choose an image "
                         f"size that is a multiple of {p} (--image-size) or another --patch-size")
    if c["hidden_size"] % c["num_heads"]:
        raise ProbeError(f"hidden size {c['hidden_size']} is not divisible by "
                         f"{c['num_heads']} heads: change --hidden-size or --num-heads")
    if c["hidden_size"] % 4:
        raise ProbeError(f"hidden size {c['hidden_size']} must be a multiple of 4 "
                         "(2-D sin-cos positions)")
    depth = c["depth"]
    if c["encoder_depth"] is None:
        if depth % 2:
            raise ProbeError(f"depth {depth} cannot be split into equal encoder and decoder "
                             f"halves: use an even --depth or set --encoder-depth (1..{depth - 1})")
        c["encoder_depth"] = depth // 2
    if not 1 <= c["encoder_depth"] <= depth - 1:
        raise ProbeError(f"encoder depth {c['encoder_depth']} does not split {depth} blocks into "
                         f"an encoder and a decoder: use 1..{depth - 1}")
    D = patch_dim(c)
    if c["noise_space"] == "pixel":
        if config.get("latent_dim") is not None:
            raise ProbeError("latent_dim (--latent-dim) only applies to noise_space='latent'; "
                             "drop it for pixel noise")
        c["latent_dim"] = None
    else:
        d = c["latent_dim"] if c["latent_dim"] is not None else max(1, D // 4)
        if not 1 <= d <= D:
            raise ProbeError(f"latent dim d={d} must be between 1 and the patch dimension "
                             f"D = channels x patch^2 = {D}: lower --latent-dim or raise "
                             "--patch-size")
        c["latent_dim"] = d
    if not c["sigma_max"] > 0:
        raise ProbeError(f"sigma_max must be positive, not {c['sigma_max']}")
    if c["num_timesteps"] < 2:
        raise ProbeError("num_timesteps must be at least 2")
    if c["single_t"] is not None and not 0 <= c["single_t"] < c["num_timesteps"]:
        raise ProbeError(f"single_t {c['single_t']} is outside the schedule: use "
                         f"0..{c['num_timesteps'] - 1}")
    if not c["residual_weight"] >= 0:
        raise ProbeError(f"residual_weight must be >= 0, not {c['residual_weight']}")
    return c


def _typed(config):
    """The defaults, updated with ``config`` coerced to each option's type (None keeps the
    default; the options whose default is None are integers)."""
    unknown = [k for k in config if k not in DEFAULTS]
    if unknown:
        raise ProbeError(f"unknown ldae option {unknown[0]!r}{suggest(unknown[0], DEFAULTS)}; "
                         f"valid: {', '.join(DEFAULTS)}")
    c = dict(DEFAULTS)
    for key, value in config.items():
        if value is not None:
            like = int if DEFAULTS[key] is None else DEFAULTS[key]
            c[key] = coerce(key, value, like, "ldae option")
    return c


# ---- the network --------------------------------------------------------------------------
class LDAENet(nn.Module):
    """The denoiser: noisy image (B, C, S, S) and timestep (B,) -> prediction (B, C, S, S)."""

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        dim, p, s = c["hidden_size"], c["patch_size"], c["image_size"]
        self.x_embedder = PatchEmbed(s, p, c["in_channels"], dim)
        self.register_buffer("pos_embed", build_sincos2d_pos_embed([s // p, s // p], dim)[None],
                             persistent=False)  # fixed, rebuilt from the config
        self.t_embedder = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, c["num_heads"], c["mlp_ratio"])
                                    for _ in range(c["depth"]))
        self.final_layer = FinalLayer(dim, p, c["in_channels"])
        self.tokenizer = (PatchPCA(c["in_channels"], p, c["latent_dim"])
                          if c["noise_space"] == "latent" else None)
        self._init_weights()
        # `probe train --resume` loads a run's saved state directly, not through
        # read_checkpoint: a run begun before version 2 has the old names.
        self._register_load_state_dict_pre_hook(
            lambda state, prefix, *_: upgrade_state_dict(state, prefix))

    def _init_weights(self):
        # DiT's initialisation: xavier everywhere, and every residual branch and the
        # output start at zero, so the untrained network is the identity on its tokens.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for m in [b.adaLN_modulation[-1] for b in self.blocks] + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x, t):
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.final_layer(tokens, c)
        return unpatchify(out, self.config["patch_size"], *x.shape[1:])


# ---- the extractor ----------------------------------------------------------------------------
class LDAEExtractor(Extractor):
    family = "ldae"

    def __init__(self, net, *, name, source=None):
        cfg = net.config
        super().__init__(net, name=name, schedule=LDAESchedule(cfg, net.tokenizer),
                         image_size=cfg["image_size"], image_channels=cfg["in_channels"],
                         config=cfg, source=source)

    def _block_modules(self):
        return {f"blocks.{i}": b for i, b in enumerate(self.net.blocks)}

    def _forward(self, x, t, y):
        return self.net(x, t)

    @property
    def encoder_blocks(self):
        return self.block_names[: self.config["encoder_depth"]]

    @property
    def decoder_blocks(self):
        return self.block_names[self.config["encoder_depth"]:]

    @property
    def encoder_output(self):
        """The block the paper probes: the last encoder block."""
        return self.encoder_blocks[-1]

    def to_pixels(self, images):
        """Images in [0, 1] -> [-1, 1], with nothing removed (the training target)."""
        return images * 2.0 - 1.0

    @property
    def input_pipeline(self):
        tok = self.net.tokenizer
        return "to [-1,1]" + (", kept to its first d PCA components per patch (the l-DAE "
                              "tokenizer)" if tok is not None else "")

    @torch.no_grad()
    def prepare(self, images):
        """Images in [0, 1] -> the clean network input: [-1, 1], and for latent noise the
        image as the tokenizer keeps it (its first d PCA components per patch), which is
        what the network sees at sigma = 0 during training."""
        x = self.to_pixels(images)
        return self.net.tokenizer.project(x) if self.net.tokenizer is not None else x

    @torch.no_grad()
    def encode(self, images, t=None, noise=None):
        """The paper's probe features: mean-pooled encoder output, (B, hidden_size).
        Clean input conditioned on t (default: 1 % of the schedule, the paper's 10 of 1000);
        pass ``noise`` to noise the input to t first."""
        t = round(0.01 * self.num_timesteps) if t is None else t
        x = self.prepare(images)
        if noise is not None:
            x = self.q_sample(x, t, noise)
        out = self.forward_intermediates(x, t, [self.encoder_output])[self.encoder_output]
        return out.mean(dim=1)

    def checkpoint(self, meta=None):
        """The checkpoint contents ``load_model("ldae", checkpoint=...)`` reads."""
        state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        return {"format": FORMAT, "version": VERSION, "config": dict(self.config),
                "model": state, "meta": dict(meta or {})}


def build(config, name="ldae", source=None):
    """A freshly initialised l-DAE (identity tokenizer until a PCA basis is set)."""
    return LDAEExtractor(LDAENet(validate_config(config)), name=name, source=source)


def read_checkpoint(path, trust_checkpoint=False):
    """A checkpoint file (or its loaded contents) -> (config, state dict, meta)."""
    obj = path if isinstance(path, dict) else load_file(path, trust_checkpoint)
    path = "the checkpoint" if isinstance(path, dict) else path
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT and "config" in obj):
        raise ProbeError(f"{path} is not an l-DAE checkpoint (no 'format': '{FORMAT}' entry); "
                         "train one with `probe train ldae`")
    if obj.get("version", 0) > VERSION:
        raise ProbeError(f"{path} was written by a newer probe (l-DAE checkpoint version "
                         f"{obj['version']}): upgrade probe")
    state = upgrade_state_dict(dict(state_dict_from(obj, path)))
    return dict(obj["config"]), state, dict(obj.get("meta") or {})


# Checkpoint version 1 -> 2: diffusers' TimestepEmbedding -> DiT's TimestepEmbedder, the
# same two linear layers under other names.
_V1_NAMES = {"t_embedder.linear_1.": "t_embedder.mlp.0.",
             "t_embedder.linear_2.": "t_embedder.mlp.2."}


def upgrade_state_dict(state, prefix=""):
    """Rename the keys of l-DAE weights saved before checkpoint version 2 (under
    ``prefix``) to today's module names, in place, and return ``state``.  Newer weights
    pass through unchanged.  The saved files themselves are never rewritten."""
    for old, new in _V1_NAMES.items():
        for key in [k for k in state if k.startswith(prefix + old)]:
            state[prefix + new + key[len(prefix + old):]] = state.pop(key)
    return state


def create(name, spec, checkpoint=None, random_init=False, trust_checkpoint=False):
    """Registry hook (``load_model`` resolves a shipped model's file to ``checkpoint``).
    The config comes from the checkpoint; ``spec['config']`` may only repeat it."""
    overrides = {k: v for k, v in (spec.get("config") or {}).items() if v is not None}
    if random_init and spec.get("file"):
        from .registry import shipped_weights

        return _untrained_like(name, shipped_weights(spec["file"]), overrides)
    if checkpoint is None:
        if not random_init:
            raise ProbeError("the ldae family has no released weights: pass a checkpoint from "
                             "`probe train ldae` (--checkpoint PATH) or --random-init")
        return build(overrides, name=name, source="random init")
    config, state, _ = read_checkpoint(checkpoint, trust_checkpoint)
    typed = _typed(overrides)  # "4" from a shell repeats depth=4
    clash = {k: typed[k] for k in overrides if k in config and config[k] != typed[k]}
    if clash:
        k = next(iter(clash))
        raise ProbeError(f"the checkpoint was trained with {k}={config[k]!r}, not {clash[k]!r}: "
                         "an l-DAE's config comes from its checkpoint, drop that option")
    source = "checkpoint contents" if isinstance(checkpoint, dict) else str(checkpoint)
    model = build({**config, **overrides}, name=name, source=source)
    load_into(model.net, state, what=source, arch="the l-DAE its config describes")
    return model


def _untrained_like(name, checkpoint, overrides):
    """The random-init baseline of a trained l-DAE: its architecture and its fitted PCA
    tokenizer (part of the data pipeline, not learned by gradient), a fresh network."""
    config, state, _ = read_checkpoint(checkpoint)
    model = build({**config, **overrides}, name=name, source="random init")
    if "tokenizer.mean" in state:
        model.net.tokenizer.set_basis(state["tokenizer.mean"], state["tokenizer.components"],
                                      state["tokenizer.variance"])
    return model


__all__ = ["DEFAULTS", "LDAEExtractor", "LDAENet", "LDAESchedule", "PatchPCA", "build",
           "create", "patchify", "unpatchify", "validate_config", "read_checkpoint",
           "upgrade_state_dict"]
