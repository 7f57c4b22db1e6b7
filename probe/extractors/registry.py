"""The model zoo: a plain dict from name to everything needed to build and load a model.

Each entry names its family (the module in ``probe.extractors`` that builds it), the
architecture in the original code's own argument names, and where its weights come
from.  ``load_model`` resolves a name or a family and hands off to the family's
``create``.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from ..errors import ProbeError, suggest

if TYPE_CHECKING:
    import torch

    from .base import Extractor

# family -> its folder; the folder's package exports ``create(name, spec, ...)``
FAMILIES = {
    "dit": "probe.extractors.dit",
    "adm": "probe.extractors.adm",
    "ldae": "probe.extractors.ldae",
    "sd": "probe.extractors.sd",
    "sit": "probe.extractors.sit",
    "sdxl": "probe.extractors.sdxl",
    "timm": "probe.extractors.reference",         # timm:NAME, any timm.list_models()
    "torchvision": "probe.extractors.reference",  # torchvision:NAME
}
# reference networks are named PREFIX:ARCHITECTURE rather than listed in MODELS
REFERENCE_PREFIXES = ("timm", "torchvision")

_DIT_VAE = "stabilityai/sd-vae-ft-ema"
_DIT_URL = "https://dl.fbaipublicfiles.com/DiT/models/{}.pt"
_ADM_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/{}.pt"


def _dit(hidden_size, depth, num_heads, input_size=32, **weights):
    config = dict(input_size=input_size, patch_size=2, in_channels=4, hidden_size=hidden_size,
                  depth=depth, num_heads=num_heads, class_dropout_prob=0.1, num_classes=1000,
                  learn_sigma=True)
    return dict(family="dit", config=config, image_size=input_size * 8, schedule="linear",
                vae=_DIT_VAE, **weights)


def _adm(image_size, class_cond=True, num_channels=256, num_res_blocks=2,
         num_head_channels=64, use_new_attention_order=False, schedule="linear", **weights):
    config = dict(image_size=image_size, num_channels=num_channels, num_res_blocks=num_res_blocks,
                  attention_resolutions="32,16,8", num_heads=4, num_head_channels=num_head_channels,
                  num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
                  use_new_attention_order=use_new_attention_order, class_cond=class_cond,
                  learn_sigma=True, dropout=0.0, use_fp16=False, use_checkpoint=False,
                  channel_mult="")
    return dict(family="adm", config=config, image_size=image_size, schedule=schedule, **weights)


_SIT_URL = ("https://www.dl.dropboxusercontent.com/scl/fi/as9oeomcbub47de5g4be0/SiT-XL-2-256.pt"
            "?rlkey=uxzxmpicu46coq3msb17b9ofa&dl=0")  # willisma/SiT download.py
_REPA_URL = ("https://www.dl.dropboxusercontent.com/scl/fi/cxedbs4da5ugjq5wg3zrg/last.pt"
             "?rlkey=8otgrdkno0nd89po3dpwngwcc&st=apcc645o&dl=0")  # sihyun-yu/REPA utils.py
# SiT's sizes (models.py SiT_models): hidden_size, depth, num_heads
_SIT_SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "xl": (1152, 28, 16)}


def _sit(size, patch, repa=False, **weights):
    """A SiT (t = 1 clean, learn_sigma) or, with ``repa``, REPA's SiT (t = 0 clean, the
    velocity only, one 768-d projector after block encoder_depth: 4 for B, 8 otherwise, as
    in the paper) on 256px images as SD-VAE latents."""
    hidden_size, depth, num_heads = _SIT_SIZES[size]
    config = dict(input_size=32, patch_size=patch, in_channels=4, hidden_size=hidden_size,
                  depth=depth, num_heads=num_heads, class_dropout_prob=0.1, num_classes=1000,
                  learn_sigma=not repa)
    if repa:
        config.update(encoder_depth=4 if size == "b" else 8, z_dims="768", projector_dim=2048)
    weights.setdefault("note", "no released weights: train your own or --random-init")
    return dict(family="sit", config=config, image_size=256,
                convention="repa" if repa else "sit",
                vae="stabilityai/sd-vae-ft-mse" if repa else _DIT_VAE, **weights)


MODELS = {
    "dit-xl-2": _dit(1152, 28, 16, url=_DIT_URL.format("DiT-XL-2-256x256"),
                     hub="facebook/DiT-XL-2-256"),
    "dit-xl-2-512": _dit(1152, 28, 16, input_size=64, url=_DIT_URL.format("DiT-XL-2-512x512"),
                         hub="facebook/DiT-XL-2-512"),
    "dit-l-2": _dit(1024, 24, 16, note="no released weights: train your own or --random-init"),
    "dit-b-2": _dit(768, 12, 12, note="no released weights: train your own or --random-init"),
    "adm-256-uncond": _adm(256, class_cond=False, url=_ADM_URL.format("256x256_diffusion_uncond")),
    "adm-256": _adm(256, url=_ADM_URL.format("256x256_diffusion")),
    "adm-128": _adm(128, num_head_channels=-1, url=_ADM_URL.format("128x128_diffusion")),
    "adm-512": _adm(512, url=_ADM_URL.format("512x512_diffusion")),
    "adm-64": _adm(64, num_channels=192, num_res_blocks=3, use_new_attention_order=True,
                   schedule="cosine", url=_ADM_URL.format("64x64_diffusion")),
}

# Trained by this project with `probe train` on the Fashion-MNIST train split (model cards
# in probe/weights/MODEL_CARDS.md).
MODELS.update({
    "ldae-fmnist": dict(family="ldae", file="ldae-fmnist.pt", image_size=28,
                        note="l-DAE, PCA latent d=4 of 49, trained here"),
    "dae-pixel-fmnist": dict(family="ldae", file="dae-pixel-fmnist.pt", image_size=28,
                             note="the same DAE with pixel noise, trained here"),
    "dit-fmnist": dict(family="dit", file="dit-fmnist.pt", image_size=28, schedule="linear",
                       config={"input_size": 28, "patch_size": 7, "in_channels": 1, "hidden_size": 128, "depth": 4, "num_heads": 2, "mlp_ratio": 4.0, "class_dropout_prob": 0.0, "num_classes": 0, "learn_sigma": False},
                       note="small pixel-space DiT (DDPM), trained here"),
    "adm-fmnist": dict(family="adm", file="adm-fmnist.pt", image_size=28, schedule="linear",
                       config={"image_size": 28, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2", "attention_resolutions": "14", "num_heads": 4, "num_head_channels": 32, "use_scale_shift_norm": True, "resblock_updown": True, "learn_sigma": False, "class_cond": False},
                       note="small ADM U-Net (DDPM), trained here"),
    "sit-fmnist": dict(family="sit", file="sit-fmnist.pt", image_size=28, convention="sit",
                       config={"input_size": 28, "patch_size": 7, "in_channels": 1, "hidden_size": 128, "depth": 4, "num_heads": 2, "mlp_ratio": 4.0, "class_dropout_prob": 0.0, "num_classes": 0, "learn_sigma": False},
                       note="dit-fmnist's network trained by flow matching (SiT), trained here"),
    # the supervised reference: dit-fmnist's size as a timm ViT, trained with cross-entropy
    # (`probe train classifier`); it sees the clean image, so it has no timestep
    "sup-fmnist": dict(family="timm", model_name="vit_tiny_patch16_224", file="sup-fmnist.pt",
                       config={"img_size": 28, "patch_size": 7, "in_chans": 1, "embed_dim": 128, "depth": 4, "num_heads": 2, "num_classes": 10},
                       pretrained_cfg={"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,), "interpolation": "bicubic", "crop_pct": 1.0},
                       image_size=28, note="supervised ViT classifier (timm), trained here"),
})

# Stable Diffusion pipelines (diffusers folders on the hub; text encoder via transformers).
# The U-Net architectures are in sd/load.py's ARCHITECTURES, so `probe blocks` needs no download.
MODELS.update({
    "sd-1.5": dict(family="sd", hub="stable-diffusion-v1-5/stable-diffusion-v1-5",
                   image_size=512, vae="the pipeline's vae/"),
    "sd-2.1-base": dict(family="sd", hub="stabilityai/stable-diffusion-2-1-base",
                        image_size=512, vae="the pipeline's vae/"),
    "sd-2.1": dict(family="sd", hub="stabilityai/stable-diffusion-2-1",
                   image_size=768, vae="the pipeline's vae/"),
    # SDXL: two text encoders, pooled text and size conditioning (sdxl/load.py ARCHITECTURES)
    "sdxl-base-1.0": dict(family="sdxl", hub="stabilityai/stable-diffusion-xl-base-1.0",
                          image_size=1024, vae="the pipeline's vae/ (float32)"),
})

# SiT (willisma/SiT) and REPA (sihyun-yu/REPA): S/B/L/XL with patch 2, 4 and 8; the released
# weights are SiT-XL/2 and REPA's SiT-XL/2 (encoder_depth 8), both 256px.
for _size in _SIT_SIZES:
    for _patch in (2, 4, 8):
        MODELS[f"sit-{_size}-{_patch}"] = _sit(_size, _patch)
        if _size != "s":  # REPA's SiT_S_* pass decoder_hidden_size=768 to a 384-wide net
            MODELS[f"repa-sit-{_size}-{_patch}"] = _sit(_size, _patch, repa=True)
MODELS["sit-xl-2"] = _sit("xl", 2, url=_SIT_URL, filename="SiT-XL-2-256x256.pt",
                          note="SiT-XL/2 256px (Ma et al. 2024), t = 1 clean")
MODELS["repa-sit-xl-2"] = _sit("xl", 2, repa=True, url=_REPA_URL,
                               filename="repa-sit-xl-2-last.pt",
                               note="REPA SiT-XL/2 256px (Yu et al. 2025), t = 0 clean")

ALIASES = {"dit-l": "dit-l-2", "dit-b": "dit-b-2", "dit-xl": "dit-xl-2", "sit-xl": "sit-xl-2",
           "repa-sit-xl": "repa-sit-xl-2"}


def register(name: str, spec: dict[str, Any]) -> None:
    """Add a model to the zoo (used for the shipped trained models and by plugins)."""
    MODELS[name] = spec


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """Registry name or alias -> (canonical name, spec); ``timm:NAME`` and
    ``torchvision:NAME`` -> a spec of that family (see probe/extractors/reference/extractor.py)."""
    prefix, sep, arch = name.partition(":")
    if sep and prefix in REFERENCE_PREFIXES:
        return name, dict(family=prefix, model_name=arch.strip(), config={})
    name = ALIASES.get(name, name)
    if name not in MODELS:
        choices = list(MODELS) + list(ALIASES) + list(FAMILIES)
        raise ProbeError(f"unknown model {name!r}{suggest(name, choices)}; "
                         f"see `probe models` for the list, or use a family: "
                         f"{', '.join(f for f in FAMILIES if f not in REFERENCE_PREFIXES)}, "
                         "or timm:NAME / torchvision:NAME")
    return name, MODELS[name]


def shipped_weights(filename: str) -> str:
    """Path of a checkpoint shipped inside the package (probe/weights/)."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", filename)
    if not os.path.exists(path):
        raise ProbeError(f"shipped weights {filename} are missing from {os.path.dirname(path)}: "
                         "reinstall probe")
    return path


def family_module(family: str) -> Any:
    return importlib.import_module(FAMILIES[family])


def load_model(name: str, checkpoint: str | None = None, random_init: bool = False,
               trust_checkpoint: bool = False, device: str | torch.device | None = None,
               init_seed: int = 0, **config: Any) -> Extractor:
    """Build a model from the zoo or from a family, and load its weights.

    ``name``: a registry name (``dit-xl-2``, ``adm-256-uncond`` ...), a family
    (``dit``, ``adm``, ``ldae``) with ``config`` in the original code's argument names, or a
    reference network ``timm:NAME`` / ``torchvision:NAME`` (``config``: the library's
    keyword arguments; default weights: the library's hub).
    ``checkpoint``: a local file or folder, or a hub id; by default the entry's released
    weights.  ``random_init``: keep the random initialisation (an untrained baseline), drawn
    from ``init_seed`` so that every process and every run gets the same weights.
    """
    if checkpoint is not None and random_init:
        raise ProbeError("give either a checkpoint or random_init, not both")
    spec: dict[str, Any]
    if name in FAMILIES:
        spec = dict(family=name, config={})
    else:
        name, spec = resolve(name)
    spec = dict(spec, config={**spec.get("config", {}), **config})
    if checkpoint is None and not random_init and spec.get("file"):
        checkpoint = shipped_weights(spec["file"])
    import torch  # here, so that the zoo above is read without it (`probe models`)

    create = family_module(spec["family"]).create
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = create(name, spec, checkpoint=checkpoint, random_init=random_init,
                       trust_checkpoint=trust_checkpoint)
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model


def load_architecture(name: str, checkpoint: str | None = None, trust_checkpoint: bool = False,
                      **config: Any) -> Extractor:
    """A model with the architecture of ``name``, to read its blocks and shapes, built on
    the meta device (no memory, no weights, no download) whenever the architecture is
    known without the weights: registry entries, and families given their config.  With
    a checkpoint, or a shipped small model, it is the real, loaded model."""
    family = name if name in FAMILIES else resolve(name)[1]["family"]
    if family in ("dit", "sit"):
        config.setdefault("vae", None)  # block shapes do not depend on the VAE
    if checkpoint:
        return load_model(name, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint,
                          **config)
    arch_flags = config.keys() - {"vae"}
    if name in FAMILIES and not arch_flags:
        raise ProbeError(f"the {name} family needs --checkpoint (API checkpoint=...) or the "
                         "architecture as --model-flags/--config (API: keyword arguments) to "
                         "show its blocks, or use a registry name (see `probe models`)")
    if name not in FAMILIES:
        name, spec = resolve(name)
        if spec.get("file") and not arch_flags:  # shipped small models: the real thing
            return load_model(name)
    import torch

    with torch.device("meta"):
        return load_model(name, random_init=True, **config)


def block_shapes(name: str, checkpoint: str | None = None, image_size: int | None = None,
                 config: dict[str, Any] | None = None, trust_checkpoint: bool = False
                 ) -> list[tuple[int, str, tuple]]:
    """``[(id, block name, output shape), ...]`` of a model in forward order, for one
    input; ``image_size``: another input side, for ADM U-Nets.  ``config``: the family's
    arguments (what ``load_model`` takes as keywords).  No weights are loaded where the
    architecture is known without them (see :func:`load_architecture`)."""
    model = load_architecture(name, checkpoint, trust_checkpoint, **(config or {}))
    return model.block_shapes(image_size)
