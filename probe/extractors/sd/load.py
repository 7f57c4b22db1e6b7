"""Where a Stable Diffusion pipeline comes from, and its parts.

A pipeline is read from a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), from a hub id (only those five parts are downloaded), or
from a single-file checkpoint that diffusers converts.  The registry entries' architectures
are kept here too, so that ``probe blocks sd-1.5`` needs no download.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ...errors import ProbeError
from .. import weights

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_CONFIG_FILE = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                "scheduler": "scheduler_config.json"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
_HUB_FILES = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/*",
              "scheduler/*"]

# The U-Nets of the registry entries: their hub unet/config.json, minus keys at their default.
_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
SD15_UNET = dict(act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
                 center_input_sample=False, cross_attention_dim=768, down_block_types=_DOWN,
                 downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4,
                 layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
                 norm_num_groups=32, out_channels=4, sample_size=64, up_block_types=_UP)
SD21_BASE_UNET = dict(SD15_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                      use_linear_projection=True)
# Both pipelines ship this PNDMScheduler config: DDPM's scaled-linear betas.
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    num_train_timesteps=1000, prediction_type="epsilon")
# SD 2.1 (768 px, v-prediction; DIFT's model): the 2.1-base U-Net on a 96x96 latent
SD21_UNET = dict(SD21_BASE_UNET, sample_size=96)
ARCHITECTURES = {"sd-1.5": SD15_UNET, "sd-2.1-base": SD21_BASE_UNET, "sd-2.1": SD21_UNET}


def locate(name: str, spec: Mapping[str, Any], checkpoint: Any,
           random_init: bool) -> dict[str, Any]:
    """``dict(kind=random|folder|single, source=..., folder/file=...)``; a hub id is fetched
    here (its five parts only), so a missing download fails before anything is built."""
    if random_init:
        return dict(kind="random", source="random init")
    if checkpoint is None:
        if spec.get("hub"):
            return _hub(spec["hub"])
        raise ProbeError("the sd family needs a pipeline: --checkpoint FOLDER (a diffusers "
                         "folder with unet/, vae/, text_encoder/, tokenizer/, scheduler/), a hub "
                         "id, or a single-file .safetensors (API checkpoint=...); or use sd-1.5 "
                         "or sd-2.1-base")
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        path = os.path.abspath(path)
        check_folder(path)
        return dict(kind="folder", source=path, folder=path)
    if os.path.isfile(path):
        return dict(kind="single", source=os.path.abspath(path), file=os.path.abspath(path))
    from ..dit.diffusers_format import looks_like_hub_id

    if looks_like_hub_id(path):
        return _hub(path)
    raise ProbeError(f"checkpoint not found: {path} (give a diffusers Stable Diffusion folder, "
                     "a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5, or a "
                     "single-file .safetensors)")


def _hub(repo_id):
    folder = weights.hub_snapshot(repo_id, _HUB_FILES)  # its five parts only
    check_folder(folder, what=repo_id)
    return dict(kind="folder", source=repo_id, folder=folder)


def read_json(path: str) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise ProbeError(f"cannot read {path}: {weights.first_line(e)}") from e


def check_folder(folder: str, what: str | None = None) -> None:
    """Refuse, in one line, a folder that is not a Stable Diffusion 1.x/2.x pipeline."""
    what = what or folder
    index_path = os.path.join(folder, "model_index.json")
    index = read_json(index_path) if os.path.exists(index_path) else {}
    cls = str(index.get("_class_name", ""))
    if "XL" in cls or "text_encoder_2" in index:
        _sdxl(what, f"an SDXL pipeline ({cls or 'text_encoder_2'})")
    if "transformer" in index or (os.path.isdir(os.path.join(folder, "transformer"))
                                  and not os.path.isdir(os.path.join(folder, "unet"))):
        _unsupported(what, f"a transformer pipeline ({cls or 'transformer/'}, e.g. SD3 or Flux)")
    missing = [p for p in PARTS if not has_part(folder, p)]
    if missing:
        raise ProbeError(
            f"{what} is not a complete Stable Diffusion pipeline: it has no {missing[0]}/"
            f"{' (nor ' + ', '.join(m + '/' for m in missing[1:]) + ')' if missing[1:] else ''}"
            " — a pipeline folder holds unet/, vae/, text_encoder/, tokenizer/ and scheduler/ "
            "(StableDiffusionPipeline.save_pretrained writes them)")
    unet = read_json(os.path.join(folder, "unet", "config.json"))
    if unet.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ProbeError(f"{what}/unet is a {unet['_class_name']}, not a UNet2DConditionModel")
    if unet.get("addition_embed_type") == "text_time":
        _sdxl(what, "an SDXL U-Net (addition_embed_type text_time)")


def _sdxl(what, kind):
    raise ProbeError(f"{what} is {kind}: use the sdxl family (--model sdxl); the sd family "
                     "reads Stable Diffusion 1.x/2.x pipelines (one CLIP text encoder)")


def _unsupported(what, kind):
    raise ProbeError(f"{what} is {kind}: not supported yet; the sd family reads Stable Diffusion "
                     "1.x/2.x pipelines (a UNet2DConditionModel with one CLIP text encoder)")


def has_part(folder: str, part: str) -> bool:
    """Whether ``folder/part/`` holds the part's config (``tokenizer*``: its vocabulary);
    ``text_encoder_2``/``tokenizer_2`` (SDXL) are read as their first namesakes."""
    sub = os.path.join(folder, part)
    if part.startswith("tokenizer"):
        return any(os.path.exists(os.path.join(sub, f)) for f in _TOKENIZER_FILES)
    return os.path.exists(os.path.join(sub, _CONFIG_FILE[part.removesuffix("_2")]))


TEXT_PARTS = {"text_encoder": "CLIPTextModel", "tokenizer": "CLIPTokenizer"}


def load_parts(located: Mapping[str, Any],
               text_parts: Mapping[str, str] = TEXT_PARTS) -> dict[str, Any]:
    """``{unet, vae, scheduler}`` and the ``text_parts`` (part -> its default transformers
    class, used where model_index.json does not name one) of a located pipeline."""
    if located["kind"] == "single":
        return _single_file(located["file"])
    folder = located["folder"]
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    index = read_json(os.path.join(folder, "model_index.json")) \
        if os.path.exists(os.path.join(folder, "model_index.json")) else {}

    def library_class(part, default):
        name = (index.get(part) or [None, default])[1] or default
        cls = getattr(transformers, name, None)
        if cls is None:
            raise ProbeError(f"{located['source']}/{part} is a {name}, which this transformers "
                             f"{transformers.__version__} does not have")
        return cls

    loaders = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "scheduler": DDPMScheduler,
               **{part: library_class(part, default) for part, default in text_parts.items()}}
    parts = {}
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a bar per part would bury the output
    try:
        for part, cls in loaders.items():
            try:
                parts[part] = cls.from_pretrained(folder, subfolder=part)
            except Exception as e:  # no weights file, a damaged file, a wrong class ...
                raise ProbeError(f"cannot load the {part} of {located['source']} "
                                 f"({part}/): {weights.first_line(e)}") from e
    finally:
        if bar:
            transformers.utils.logging.enable_progress_bar()
    return parts


def _single_file(path):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from ..dit.diffusers_format import _quiet_diffusers

    try:  # diffusers takes the pipeline's configs from the hub cache, else from the hub
        with _quiet_diffusers(True):  # its multi-line advice; ours is one line
            pipe = StableDiffusionPipeline.from_single_file(path, safety_checker=None)
    except Exception as e:  # not a checkpoint, an unknown layout, no configs offline
        raise ProbeError(
            f"diffusers cannot read {path} as a single-file Stable Diffusion checkpoint "
            f"({weights.first_line(e)}); it needs the pipeline's configs from the "
            "Hugging Face hub or its cache, so offline: convert it once with internet "
            "(StableDiffusionPipeline.from_single_file(PATH).save_pretrained(FOLDER)) and pass "
            "--checkpoint FOLDER") from e
    return dict(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                tokenizer=pipe.tokenizer, scheduler=DDPMScheduler.from_config(pipe.scheduler.config))


def random_parts(arch: Mapping[str, Any]) -> dict[str, Any]:
    """An untrained U-Net of a registry architecture and an untrained SD-shaped VAE; no text
    encoder (the conditioning is zeros)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from ..dit.diffusers_format import SD_VAE

    with torch.device("cpu"):  # the schedule's table stays real on the meta device
        scheduler = DDPMScheduler(**SD_SCHEDULER)
    return dict(unet=UNet2DConditionModel(**arch), vae=AutoencoderKL(**SD_VAE),
                text_encoder=None, tokenizer=None, scheduler=scheduler)
