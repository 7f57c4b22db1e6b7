"""Where an SDXL pipeline comes from, and its parts.

A diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``,
``tokenizer/``, ``tokenizer_2/``, ``scheduler/``, as ``StableDiffusionXLPipeline.
save_pretrained`` writes it) or a hub id (only those parts are downloaded).  Reading the
parts is the sd family's loader with two more text parts; the base U-Net's architecture
is kept here so that ``probe blocks sdxl-base-1.0`` needs no download.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ...errors import ProbeError
from .. import weights
from ..sd import load as sd_load

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
         "scheduler")
TEXT_PARTS = {"text_encoder": "CLIPTextModel", "tokenizer": "CLIPTokenizer",
              "text_encoder_2": "CLIPTextModelWithProjection", "tokenizer_2": "CLIPTokenizer"}
_HUB_FILES = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/config.json", "text_encoder/model.safetensors",
              "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
              "tokenizer/*", "tokenizer_2/*", "scheduler/*"]

# stabilityai/stable-diffusion-xl-base-1.0's unet/config.json, minus keys at their default.
SDXL_BASE_UNET = dict(
    addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    in_channels=4, layers_per_block=2, out_channels=4,
    projection_class_embeddings_input_dim=2816, sample_size=128,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True)
# its EulerDiscreteScheduler's training betas (scaled linear, as SD's)
SDXL_SCHEDULER = dict(sd_load.SD_SCHEDULER)
# its VAE: SD's layout with 1024 px-tuned weights and another scaling factor
SDXL_VAE_SCALE = 0.13025
ARCHITECTURES = {"sdxl-base-1.0": SDXL_BASE_UNET}
TEXT_WIDTHS = {"sdxl-base-1.0": (2048, 1280)}  # (hidden states, pooled) of the random init


def locate(name: str, spec: Mapping[str, Any], checkpoint: Any,
           random_init: bool) -> dict[str, Any]:
    """``dict(kind=random|folder, source=..., folder=...)``; a hub id is fetched here (its
    seven parts only), so a missing download fails at once with a one-line error."""
    if random_init:
        return dict(kind="random", source="random init")
    if checkpoint is None:
        if spec.get("hub"):
            return _hub(spec["hub"])
        raise ProbeError("the sdxl family needs a pipeline: --checkpoint FOLDER (a diffusers "
                         "SDXL folder, as StableDiffusionXLPipeline.save_pretrained writes it) "
                         "or a hub id (API checkpoint=...); or use sdxl-base-1.0")
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        path = os.path.abspath(path)
        check_folder(path)
        return dict(kind="folder", source=path, folder=path)
    from ..dit.diffusers_format import looks_like_hub_id

    if not os.path.exists(path) and looks_like_hub_id(path):
        return _hub(path)
    raise ProbeError(f"{path} is not a diffusers SDXL folder (single files are not read: "
                     "convert with StableDiffusionXLPipeline.from_single_file(PATH)"
                     ".save_pretrained(FOLDER) and pass --checkpoint FOLDER)")


def _hub_error(repo_id: str):
    def error(exc: BaseException) -> ProbeError:
        return ProbeError(
            f"could not fetch the SDXL pipeline {repo_id} ({weights.first_line(exc)}): "
            "download it on a machine with internet (huggingface-cli download "
            f"{repo_id}, or StableDiffusionXLPipeline.from_pretrained(...).save_pretrained"
            "(FOLDER)) and pass --checkpoint FOLDER, or use --random-init")
    return error


def _hub(repo_id: str) -> dict[str, Any]:
    folder = weights.hub_snapshot(repo_id, _HUB_FILES, error=_hub_error(repo_id))
    check_folder(folder, what=repo_id)
    return dict(kind="folder", source=repo_id, folder=folder)


def check_folder(folder: str, what: str | None = None) -> None:
    """Refuse, in one line, a folder that is not an SDXL pipeline, naming the missing part."""
    what = what or folder
    missing = [p for p in PARTS if not sd_load.has_part(folder, p)]
    if missing == ["text_encoder_2", "tokenizer_2"] or missing == ["text_encoder_2"]:
        raise ProbeError(
            f"{what} has no text_encoder_2/ (a CLIPTextModelWithProjection): an SDXL folder "
            "holds both text encoders and their tokenizers (text_encoder/, text_encoder_2/, "
            "tokenizer/, tokenizer_2/) besides unet/, vae/ and scheduler/; a folder with one "
            "text encoder is Stable Diffusion 1.x/2.x: use --model sd")
    if missing:
        raise ProbeError(
            f"{what} is not a complete SDXL pipeline: it has no {', '.join(m + '/' for m in missing)}"
            " — an SDXL folder holds unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, "
            "tokenizer_2/ and scheduler/ (StableDiffusionXLPipeline.save_pretrained writes them)")
    unet = sd_load.read_json(os.path.join(folder, "unet", "config.json"))
    if unet.get("addition_embed_type") != "text_time":
        raise ProbeError(f"{what}/unet is not an SDXL U-Net (its addition_embed_type is "
                         f"{unet.get('addition_embed_type')!r}, not 'text_time')")


def load_parts(located: Mapping[str, Any]) -> dict[str, Any]:
    """``{unet, vae, scheduler, text_encoder(_2), tokenizer(_2)}`` of a located folder."""
    return sd_load.load_parts(located, TEXT_PARTS)


def random_parts(arch: Mapping[str, Any]) -> dict[str, Any]:
    """An untrained U-Net of a registry architecture and an untrained SD-shaped VAE; no
    text encoders (the conditioning is zeros)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from ..dit.diffusers_format import SD_VAE

    with torch.device("cpu"):  # the schedule's table stays real on the meta device
        scheduler = DDPMScheduler(**SDXL_SCHEDULER)
    return dict(unet=UNet2DConditionModel(**arch),
                vae=AutoencoderKL(**dict(SD_VAE, scaling_factor=SDXL_VAE_SCALE)),
                text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                scheduler=scheduler)
