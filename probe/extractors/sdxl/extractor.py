"""Stable Diffusion XL U-Nets through diffusers.

The sd family's extractor (blocks, prompt and ``{class}`` handling, dtype settling, the
VAE encoder) with SDXL's conditioning, built as diffusers'
``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids`` build it
(diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py):

- ``encoder_hidden_states``: the penultimate hidden states (``hidden_states[-2]``) of both
  text encoders, concatenated on the feature axis (768 + 1280 = 2048 for SDXL base);
- ``text_embeds``: the second encoder's pooled projection (CLIPTextModelWithProjection);
- ``time_ids``: (original size, crop top-left (0, 0), target size), both sizes the
  image's, read from the latent's side times the VAE's downsampling factor.

The default prompt is "", encoded as diffusers encodes the *conditional* prompt "".
``force_zeros_for_empty_prompt`` only zeros the *negative* (classifier-free guidance)
branch, which a probe never runs.  The VAE always runs in float32: SDXL's VAE overflows
to NaN in float16.  Details: docs/sd.md, section SDXL.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...errors import ProbeError
from ..schedules import PipelineSchedule
from ..sd import extractor as sd
from . import load as sdxl_load


class SDXLExtractor(sd.SDExtractor):
    family = "sdxl"

    def __init__(self, net: Any, *, text_encoder_2: Any, tokenizer_2: Any,
                 pooled: torch.Tensor, latent_factor: int, **kw: Any) -> None:
        super().__init__(net, **kw)
        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2
        self.latent_factor = latent_factor  # image side / latent side
        # one row per prompt, as prompt_embeds; a buffer, so the weights hash covers it
        self.register_buffer("pooled_embeds", pooled)

    # ---- conditioning ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_both(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds (P, L, D1 + D2), pooled (P, D2))`` as ``encode_prompt`` computes
        them: each tokenizer pads to its max length, each encoder runs without an attention
        mask, and its hidden_states[-2] is kept; the pooled vector is the second's."""
        if self.text_encoder is None or self.text_encoder_2 is None:
            raise ProbeError(f"{self.name} has no text encoders (random init): it is "
                             "conditioned on zeros and takes no prompt")
        states, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder),
                                   (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(list(prompts), padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the second encoder's text_embeds (its projection)
        assert pooled is not None and pooled.ndim == 2, "text_encoder_2 has no projection"
        return torch.cat(states, dim=-1).float(), pooled.float()

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.encode_both(prompts)[0]

    def set_prompts(self, prompts: Sequence[str]) -> None:
        self.prompt_embeds, self.pooled_embeds = self.encode_both(prompts)

    def time_ids(self, height: int, width: int) -> torch.Tensor:
        """``_get_add_time_ids`` at an image of this size: original size (h, w), crop
        top-left (0, 0), target size (h, w)."""
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)

    def _forward(self, x, t, y):
        rows = slice(0, 1) if y is None else y
        embeds, pooled = self.prompt_embeds[rows], self.pooled_embeds[rows]
        if y is None:
            embeds, pooled = embeds.expand(x.shape[0], -1, -1), pooled.expand(x.shape[0], -1)
        f = self.latent_factor
        times = self.time_ids(x.shape[-2] * f, x.shape[-1] * f).to(x.device)
        dtype = self.net.dtype
        cond = {"text_embeds": pooled.to(dtype),
                "time_ids": times.to(dtype).expand(x.shape[0], -1)}
        return self.net(x.to(dtype), t, encoder_hidden_states=embeds.to(dtype),
                        added_cond_kwargs=cond, return_dict=False)[0]

    # ---- dtypes ------------------------------------------------------------------------------
    def cast_modules(self) -> list[Any]:
        return [self.net, self.text_encoder, self.text_encoder_2]

    def _apply(self, fn, recurse=True):
        # The VAE follows the model's device but never its dtype: a cast there and back
        # (model.half(), then .float()) would round its float32 weights for good.
        vae = self._modules.get("vae")
        if vae is None:
            return super()._apply(fn, recurse)
        self._modules["vae"] = None
        try:
            super()._apply(fn, recurse)
        finally:
            self._modules["vae"] = vae
        vae.to(fn(torch.zeros(0)).device)
        return self.settle_dtype()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type not in ("cpu", "cuda"):
            return super().prepare(images)
        with torch.autocast(images.device.type, enabled=False):  # a caller's autocast too
            return super().prepare(images)

    def settle_dtype(self) -> SDXLExtractor:
        super().settle_dtype()
        if self.vae is not None and next(self.vae.parameters()).dtype != torch.float32:
            self.vae.float()  # SDXL's VAE gives NaNs in float16, whatever the U-Net runs in
        return self

    # ---- records -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        info = super().describe()
        pooled = self.pooled_embeds
        digest = None
        if pooled.device.type != "meta":
            digest = hashlib.sha256(pooled.detach().float().cpu().contiguous().numpy()
                                    .tobytes()).hexdigest()
        side = self.image_size
        info["conditioning"].update(
            text_embeds_shape=list(pooled.shape), text_embeds_sha256=digest,
            time_ids=[side, side, 0, 0, side, side],
            text_encoder_2=None if self.text_encoder_2 is None
            else type(self.text_encoder_2).__name__)
        info["vae_dtype"] = "float32"
        return info


# ---- building a model ----------------------------------------------------------------------

def create(name: str, spec: Mapping[str, Any], checkpoint: Any = None, random_init: bool = False,
           trust_checkpoint: bool = False) -> SDXLExtractor:
    """An SDXL extractor from a registry entry (its hub id) or the family with a checkpoint
    (a diffusers folder or a hub id).  Options: as the sd family's (``prompt``,
    ``torch_dtype``, ``attention_slice``, ``vae``)."""
    options = sd._options(spec.get("config", {}))
    located = sdxl_load.locate(name, spec, checkpoint, random_init)
    parts = sd.build_parts(name, located, options, sdxl_load, "sdxl")
    unet = parts["unet"]
    if unet.config.get("addition_embed_type") != "text_time":
        raise ProbeError(f"{located['source']}: its U-Net is not an SDXL U-Net "
                         "(addition_embed_type is not text_time); use --model sd")
    vae, vae_label, factor = sd.fit_vae(parts, options, located)
    vae.float()
    width = unet.config.cross_attention_dim
    if parts["text_encoder"] is not None:
        length = parts["tokenizer"].model_max_length
        embeds = torch.zeros(0, length, width)
        pooled = torch.zeros(0, parts["text_encoder_2"].config.projection_dim)
    else:  # a random init has no tokenizer: SDXL's token count and its pooled width
        embeds = torch.zeros(1, 77, width)
        pooled = torch.zeros(1, sdxl_load.TEXT_WIDTHS[name][1])
    model = SDXLExtractor(
        unet, text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"],
        pooled=pooled, latent_factor=factor,
        prompt=options["prompt"], torch_dtype=options["torch_dtype"], embeds=embeds,
        name=name, schedule=PipelineSchedule(parts["scheduler"]),
        image_size=unet.config.sample_size * factor, image_channels=vae.config.in_channels,
        vae=vae, vae_scale=vae.config.scaling_factor,
        config={"in_channels": unet.config.in_channels, "input_size": unet.config.sample_size,
                "unet": sd._plain(unet.config), "prompt": options["prompt"],
                "torch_dtype": options["torch_dtype"],
                "attention_slice": options["attention_slice"], "vae": vae_label},
        source=located["source"])
    if parts["text_encoder"] is not None and not model.is_template:
        model.set_prompts([options["prompt"]])  # in float32, before settling
    model.settle_dtype()
    _check_widths(model, unet, located["source"])
    return model


def _check_widths(model: SDXLExtractor, unet: Any, source: str) -> None:
    """The text encoders' widths against the U-Net's, as ``_get_add_time_ids`` checks them."""
    width = unet.config.cross_attention_dim
    if model.prompt_embeds.shape[-1] != width:
        raise ProbeError(f"{source}: the text encoders' widths add up to "
                         f"{model.prompt_embeds.shape[-1]}, not the U-Net's "
                         f"cross_attention_dim {width}")
    passed = unet.config.addition_time_embed_dim * 6 + model.pooled_embeds.shape[-1]
    expected = unet.add_embedding.linear_1.in_features
    if passed != expected:
        raise ProbeError(f"{source}: the U-Net's added embedding takes {expected} features, but "
                         f"6 time ids x {unet.config.addition_time_embed_dim} + the pooled "
                         f"{model.pooled_embeds.shape[-1]} make {passed}")
