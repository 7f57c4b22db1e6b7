"""The l-DAE's config: its options, their defaults, and the checks of a user's choice.

Every option is a key of ``DEFAULTS``; a config is validated once (:func:`validate_config`),
and every mistake is a one-line ProbeError naming the flag to change.
"""
import math
from collections.abc import Mapping
from typing import Any

from ...errors import ProbeError
from ..config import read_config
from .tokenizer import KINDS

NET_INPUTS = ("projected", "latent")
NET_OUTPUTS = ("original", "projected")
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
    # the tokenizer and the pixel-side variant (checkpoint version 3)
    tokenizer="pca", tokenizer_width=16, net_input="projected", net_output="original",
)


def patch_dim(config: Mapping[str, Any]) -> int:
    return config["in_channels"] * config["patch_size"] ** 2


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults, type and check a config; every user mistake is a one-line ProbeError."""
    c = read_options(config)
    for key, choices in (("noise_space", NOISE_SPACES), ("schedule", SCHEDULES),
                         ("target", TARGETS), ("loss_weight", LOSS_WEIGHTS),
                         ("tokenizer", KINDS), ("net_input", NET_INPUTS),
                         ("net_output", NET_OUTPUTS)):
        if c[key] not in choices:
            raise ProbeError(f"ldae {key} must be one of {', '.join(choices)}, not {c[key]!r}")
    for key in ("image_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads",
                "num_timesteps", "tokenizer_width"):
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
        _check_pixel_noise(config)
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
    if c["target"] == "noise" and (c["net_input"] == "latent" or c["tokenizer"] == "conv-vae"):
        raise ProbeError("target='noise' (--target noise) needs pixel input through an affine "
                         "tokenizer: drop it, or use --input projected with pca/patch-ae/"
                         "patch-vae")
    return c


def _check_pixel_noise(config):
    """The tokenizer options mean nothing without a tokenizer: refuse them."""
    for key, default in (("tokenizer", "pca"), ("net_input", "projected"),
                         ("net_output", "original")):
        if config.get(key) not in (None, default):
            raise ProbeError(f"{key}={config[key]!r} only applies to noise_space='latent' (the "
                             "pixel DAE has no tokenizer): drop it for pixel noise")


def read_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults, updated with ``config`` coerced to each option's type (None keeps the
    default; the options whose default is None are integers)."""
    return read_config(config, DEFAULTS, "ldae option", types=_INTEGERS, none_keeps_default=True)


_INTEGERS = {k: int for k, v in DEFAULTS.items() if v is None}
