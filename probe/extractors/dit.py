"""DiT (Peebles & Xie 2023): latent diffusion transformers.

Weights come in two formats and give the same network:

* the original ``facebookresearch/DiT`` format: a ``.pt`` state dict (the released
  ``DiT-XL-2-*.pt``) or a ``train.py`` checkpoint, run by :class:`~.dit_net.DiT`;
* diffusers: a saved ``DiTTransformer2DModel`` or ``DiTPipeline`` folder, or a hub id
  such as ``facebook/DiT-XL-2-256``, run by diffusers itself.

Blocks are ``blocks.0 .. blocks.{depth-1}`` in forward order for both; each outputs
(B, tokens, hidden_size).  Latent DiTs take images through a diffusers
``AutoencoderKL`` (``Extractor.prepare`` encodes).
"""
import os
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ProbeError, suggest
from . import checkpoints
from .base import Extractor
from .dit_net import DiT, sincos_pos_embed
from .schedules import DDPMSchedule

# The DiT constructor's arguments and defaults (DiT-XL/2, 256px).
DEFAULTS = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
                learn_sigma=True)

# The Stable Diffusion VAE's shape (sd-vae-ft-ema / -mse), for vae="random".
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512), sample_size=256,
              down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)
VAE_SCALE = 0.18215

_DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
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
    def blocks(self):
        return self.transformer.transformer_blocks

    def forward(self, x, t, y=None):
        return self.transformer(x, timestep=t, class_labels=y, return_dict=False)[0]


# ---- building a model ---------------------------------------------------------------------

def create(name, spec, checkpoint=None, random_init=False, trust_checkpoint=False):
    """Build a DiT from a registry entry or from constructor arguments (family load).

    ``spec["config"]`` holds DiT's arguments plus optionally ``vae``: a hub id, a local
    folder, ``"random"`` or None (pixel space).  By default a registry entry uses its
    ``vae``, a DiTPipeline checkpoint its own, and a family load none.
    """
    given = dict(spec.get("config", {}))
    vae_source = given.pop("vae", _NO_VAE_GIVEN)
    _check_keys(given)
    weights = _locate_weights(name, spec, checkpoint, random_init)
    if weights["kind"] in ("folder", "hub"):
        net, config = _load_diffusers(weights, name, given)
    else:
        config = resolve_config(given)
        net = DiT(**config)
        if weights["kind"] != "random":
            state = checkpoints.state_dict_from(weights["state"](trust_checkpoint),
                                                weights["source"])
            checkpoints.load_into(net, state, what=weights["source"], arch=_describe(name, config))

    vae_subfolder = None
    if vae_source is _NO_VAE_GIVEN:
        vae_source, vae_subfolder = weights.get("vae") or (spec.get("vae"), None)
    vae = load_vae(vae_source, vae_subfolder)
    vae_source = _vae_label(vae_source, vae_subfolder) if vae is not None else None
    if vae is not None and vae.config.latent_channels != config["in_channels"]:
        raise ProbeError(f"the VAE {vae_source} makes {vae.config.latent_channels}-channel "
                         f"latents but {name} takes in_channels={config['in_channels']}")
    # The schedule's tables stay real even when the net is built on the meta device.
    with torch.device("cpu"):
        schedule = DDPMSchedule(spec.get("schedule", "linear"), 1000)
    conditional = config["num_classes"] > 0
    has_null = conditional and config["class_dropout_prob"] > 0
    if vae is None:
        image_size, image_channels = config["input_size"], config["in_channels"]
    else:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        image_size, image_channels = config["input_size"] * factor, vae.config.in_channels
    return DiTExtractor(
        net, name=name, schedule=schedule, image_size=image_size, image_channels=image_channels,
        num_classes=config["num_classes"] if conditional else None,
        null_class=config["num_classes"] if has_null else None,
        vae=vae, vae_scale=VAE_SCALE,
        config={**config, "vae": vae_source},
        source=weights["source"])


def resolve_config(given):
    """User arguments -> the complete, typed DiT constructor arguments."""
    _check_keys(given)
    c = {**DEFAULTS, **{k: _coerce(k, v) for k, v in given.items()}}
    if c["hidden_size"] % c["num_heads"] or c["hidden_size"] % 4:
        raise ProbeError(f"DiT hidden_size={c['hidden_size']} must be a multiple of num_heads="
                         f"{c['num_heads']} and of 4")
    if c["input_size"] % c["patch_size"]:
        raise ProbeError(f"DiT input_size={c['input_size']} must be a multiple of patch_size="
                         f"{c['patch_size']}")
    return c


def _coerce(key, value):
    """A value as typed from a shell or JSON -> the type of DiT's default."""
    kind = type(DEFAULTS[key])
    text = str(value).strip().lower()
    if kind is bool and text in ("true", "1", "false", "0"):
        return text in ("true", "1")
    try:
        number = float(value)
        if kind is int and number.is_integer():
            return int(number)
        if kind is float:
            return number
    except (TypeError, ValueError):
        pass
    expected = {bool: "True or False", int: "an integer"}.get(kind, "a number")
    raise ProbeError(f"DiT argument {key}={value!r} should be {expected}")


def _check_keys(given):
    for key in given:
        if key not in DEFAULTS:
            raise ProbeError(f"unknown DiT argument {key!r}{suggest(key, DEFAULTS)}; DiT takes "
                             f"{', '.join(DEFAULTS)} and vae")


def _describe(name, config):
    return (f"the DiT of {name} (hidden_size={config['hidden_size']}, depth={config['depth']}, "
            f"input_size={config['input_size']}, num_classes={config['num_classes']})")


# ---- where the weights are ----------------------------------------------------------------

def _locate_weights(name, spec, checkpoint, random_init):
    """Work out where the weights come from without fetching them yet (so a missing
    checkpoint is reported before a VAE download).  Returns a dict with kind
    random | file | url | state | folder | hub, the source, and a pipeline's own VAE."""
    if random_init:
        return dict(kind="random", source="random init")
    if checkpoint is None:
        if spec.get("url"):
            url = spec["url"]
            return dict(kind="url", source=url, state=lambda _: checkpoints.fetch_url(url))
        if spec.get("hub"):
            return _hub_weights(spec["hub"])
        what = ("the dit family has no default weights" if name == "dit"
                else f"{name} has no released weights")
        raise ProbeError(f"{what}: pass a checkpoint (--checkpoint PATH, API checkpoint=...: a "
                         "DiT .pt or train.py checkpoint, or a diffusers folder) or --random-init "
                         "(API random_init=True) for an untrained baseline")
    if isinstance(checkpoint, Mapping):
        return dict(kind="state", source="state dict", state=lambda _: checkpoint)
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        path = os.path.abspath(path)
        sub = _subfolder(path, "transformer")
        has_vae = sub and os.path.exists(os.path.join(path, "vae", "config.json"))
        return dict(kind="folder", source=path, subfolder=sub,
                    vae=(os.path.join(path, "vae"), None) if has_vae else None)
    if os.path.exists(path):
        path = os.path.abspath(path)
        return dict(kind="file", source=path,
                    state=lambda trust: checkpoints.load_file(path, trust))
    if path.startswith(("http://", "https://")):
        return dict(kind="url", source=path, state=lambda _: checkpoints.fetch_url(path))
    if _looks_like_hub_id(path):
        return _hub_weights(path)
    raise ProbeError(f"checkpoint not found: {path} (give a DiT .pt file, a diffusers folder, "
                     "or a hub id such as facebook/DiT-XL-2-256)")


def _looks_like_hub_id(text):
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith(".") and \
        not text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _subfolder(folder, sub):
    """None if ``folder`` itself holds a model config, ``sub`` if its subfolder does."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return None
    if os.path.exists(os.path.join(folder, sub, "config.json")):
        return sub
    raise ProbeError(f"{folder} is not a diffusers model folder: expected config.json or "
                     f"{sub}/config.json (save_pretrained writes them)")


def _hub_weights(repo_id):
    folder = _hub_configs(repo_id, lambda e: checkpoints.no_weights_error(repo_id, e))
    sub = _subfolder(folder, "transformer")
    has_vae = sub is not None and os.path.exists(os.path.join(folder, "vae", "config.json"))
    return dict(kind="hub", source=repo_id, repo=repo_id, subfolder=sub,
                vae=(repo_id, "vae") if has_vae else None)


def _hub_configs(repo_id, error):
    """The config files of a hub repo, from the cache or the hub.  This fails at once
    when offline, where diffusers' from_pretrained retries for half a minute."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=[
            "model_index.json", "config.json", "transformer/config.json", "vae/config.json"])
    except Exception as e:  # offline, no such repo, gated ...
        raise error(e) from e


def _from_pretrained(cls, where, subfolder, error):
    """cls.from_pretrained, trying the local cache first so a cached model needs no network."""
    kwargs = dict(subfolder=subfolder) if subfolder else {}
    if not os.path.isdir(where):
        try:
            return cls.from_pretrained(where, local_files_only=True, **kwargs)
        except Exception:  # not cached (completely): fetch it
            pass
    try:
        return cls.from_pretrained(where, **kwargs)
    except Exception as e:
        raise error(e) from e


# ---- diffusers weights -------------------------------------------------------------------

def _load_diffusers(weights, name, given):
    from diffusers import DiTTransformer2DModel

    where = weights.get("repo", weights["source"])
    if weights["kind"] == "folder":
        _check_class(where, weights["subfolder"])

        def error(e):
            return ProbeError(f"cannot load a diffusers DiT from {where}: "
                              f"{checkpoints._first_line(e)}")
    else:
        def error(e):
            return checkpoints.no_weights_error(where, e)

    pos = _saved_pos_embed(where, weights["subfolder"]) if weights["kind"] == "folder" else None
    with _quiet_diffusers(pos is not None):  # it would warn that it skips the saved table
        transformer = _from_pretrained(DiTTransformer2DModel, where, weights["subfolder"], error)
    if pos is not None:
        transformer.pos_embed.pos_embed.copy_(pos)
    config = config_from_diffusers(transformer.config)
    wrong = [f"{k}={config[k]} (not {given[k]})" for k in given
             if k != "class_dropout_prob" and config[k] != _coerce(k, given[k])]
    if wrong:
        raise ProbeError(f"{weights['source']} does not fit {name}: it is a DiT with "
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


def config_from_diffusers(c):
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


def to_diffusers(model, config=None):
    """Original-format DiT weights -> a diffusers ``DiTTransformer2DModel``, e.g. to
    ``save_pretrained`` them.  ``model`` is a DiT extractor (its config is used), or a
    :class:`~.dit_net.DiT` or a state dict with ``config`` its DiT arguments.  Loaded back
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
        state = checkpoints.state_dict_from(model, "the state dict")
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
    checkpoints.load_into(transformer, out, what="the DiT state dict",
                          arch=f"diffusers' DiTTransformer2DModel for {_describe('it', c)}")
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

def load_vae(source, subfolder=None):
    """A diffusers AutoencoderKL from a hub id or local folder; ``"random"`` for an
    untrained one of the SD-VAE's shape; None (or "none") for no VAE: a pixel-space DiT."""
    if source is None or source == "none":
        return None
    from diffusers import AutoencoderKL

    if source == "random":
        return AutoencoderKL(**SD_VAE)

    def error(e):
        return ProbeError(
            f"could not load the VAE {_vae_label(source, subfolder)} "
            f"({checkpoints._first_line(e)}): download it on a machine with internet and pass "
            "its folder (--vae FOLDER, API vae=...), or use --vae random (API vae='random') "
            "for an untrained one")

    source = os.fspath(source)
    if os.path.isdir(source):
        subfolder = subfolder or _subfolder(source, "vae")
    elif _looks_like_hub_id(source):
        if subfolder is None:
            subfolder = _subfolder(_hub_configs(source, error), "vae")
    else:
        raise ProbeError(f"VAE not found: {source} (give a hub id such as "
                         "stabilityai/sd-vae-ft-ema, a saved AutoencoderKL folder, or 'random')")
    return _from_pretrained(AutoencoderKL, source, subfolder, error)


def _vae_label(source, subfolder):
    if source is None:
        return None
    return f"{os.fspath(source)}/{subfolder}" if subfolder else os.fspath(source)
