"""Stable Diffusion 1.x/2.x, and other diffusers ``UNet2DConditionModel`` pipelines.

The U-Net runs as diffusers runs it, conditioned on a text embedding computed once with
the pipeline's own tokenizer and text encoder: the empty prompt by default, or a prompt
whose ``{class}`` is filled with a class name per image (the features then depend on the
labels, so it takes ``--true-labels`` or ``--class-label N``, never silently).  Images
are encoded with the pipeline's VAE (posterior mean times its ``scaling_factor``) and
noised with its own scheduler's betas.

Blocks, in the order they finish: ``conv_in``, then per down block its resnets and
attentions (``down_blocks.0.resnets.0``, ``down_blocks.0.attentions.0``, ...) and the
block itself (``down_blocks.0``, after its downsampler), the same for ``mid_block`` and
the up blocks.  DIFT's ``up_ft_index`` i is ``up_blocks.i``.  Details: docs/sd.md.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...errors import ProbeError
from . import load as sd_load
from ..base import Extractor
from ..config import coerce, is_off, read_config
from ..schedules import PipelineSchedule

CLASS_FIELD = "{class}"
NET_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NO_VAE_GIVEN = object()


class SDExtractor(Extractor):
    family = "sd"
    prefers_channels_last = True

    def __init__(self, net, *, text_encoder, tokenizer, prompt, torch_dtype, embeds, **kw):
        super().__init__(net, **kw)
        self.text_encoder = text_encoder  # None for a random init (zero conditioning)
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.torch_dtype = torch_dtype    # "auto": float16 on CUDA, float32 elsewhere
        self.class_names = None
        # One row per prompt: the fixed prompt's, or one per class for a {class} template.
        # A buffer, so that the weights hash of the features covers the conditioning.
        self.register_buffer("prompt_embeds", embeds)

    @property
    def is_template(self) -> bool:
        return CLASS_FIELD in self.prompt

    # ---- blocks ----------------------------------------------------------------------------
    def _block_modules(self):
        unet = self.net
        out = OrderedDict(conv_in=unet.conv_in)
        for i, block in enumerate(unet.down_blocks):
            _add_inner(out, f"down_blocks.{i}", block)
        if unet.mid_block is not None:
            _add_inner(out, "mid_block", unet.mid_block, mid=True)
        for i, block in enumerate(unet.up_blocks):
            _add_inner(out, f"up_blocks.{i}", block)
        return out

    # ---- conditioning ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings (P, L, D) of a list of prompts, as the pipeline computes them:
        padded to the tokenizer's max length, the text encoder's last hidden state."""
        if self.text_encoder is None:
            raise ProbeError(f"{self.name} has no text encoder (random init): it is "
                             "conditioned on zeros and takes no prompt")
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = (tok.attention_mask.to(device)
                if getattr(self.text_encoder.config, "use_attention_mask", False) else None)
        return self.text_encoder(tok.input_ids.to(device), attention_mask=mask)[0].float()

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """Condition on these prompts (one row each): the buffers the forward reads."""
        self.prompt_embeds = self.encode(prompts)

    def use_class_names(self, names: Sequence[str]) -> None:
        """Fill the prompt's {class} with each class name: labels y then pick the row."""
        if not self.is_template:
            return
        names = [str(n) for n in names]
        if not names:
            raise ProbeError(f"the prompt {self.prompt!r} fills {CLASS_FIELD} with a class name, "
                             "but the data has no class names: use a prompt without "
                             f"{CLASS_FIELD}, or data with classes")
        self.set_prompts([self.prompt.replace(CLASS_FIELD, n) for n in names])
        self.class_names, self.num_classes = names, len(names)

    def labels(self, y: Any, batch: int, device: torch.device) -> torch.Tensor | None:
        if not self.is_template:
            if y is not None:
                raise ProbeError(
                    f"{self.name} takes no class labels: its prompt {self.prompt!r} has no "
                    f"{CLASS_FIELD} to fill (drop --class-label/--true-labels, or use e.g. "
                    f"--prompt 'a photo of a {CLASS_FIELD}')")
            return None
        if self.class_names is None:
            raise ProbeError(f"the prompt {self.prompt!r} needs the class names first: call "
                             "model.use_class_names(names) (probe extract does)")
        if y is None:
            raise ProbeError(
                f"the prompt {self.prompt!r} puts a class name in the conditioning: pass "
                "--true-labels (each image's own class; the features then depend on the "
                "labels) or --class-label N (class N's name for every image); API: y=...")
        y = super().labels(y, batch, device)
        if y.device.type != "meta" and y.numel() and not 0 <= int(y.min()) <= int(y.max()) \
                < self.num_classes:
            raise ProbeError(f"class label out of range: the data has {self.num_classes} "
                             f"classes (0..{self.num_classes - 1})")
        return y

    def _forward(self, x, t, y):
        rows = self.prompt_embeds[:1].expand(x.shape[0], -1, -1) if y is None \
            else self.prompt_embeds[y]
        dtype = self.net.dtype
        return self.net(x.to(dtype), t, encoder_hidden_states=rows.to(dtype),
                        return_dict=False)[0]

    # ---- the network's dtype -----------------------------------------------------------------
    @property
    def network_dtype(self) -> torch.dtype:
        if self.torch_dtype != "auto":
            return NET_DTYPES[self.torch_dtype]
        on_cuda = next(self.net.parameters()).device.type == "cuda"
        return torch.float16 if on_cuda else torch.float32

    def _apply(self, fn, recurse=True):
        # Every move (.to(device), .cuda(), .cpu()) settles the network's dtype anew.
        super()._apply(fn, recurse)
        return self.settle_dtype()

    def settle_dtype(self) -> SDExtractor:
        """Cast the U-Net and the text encoder to :attr:`network_dtype` (for the device they
        are on); the VAE encoder is small and stays as loaded (float32)."""
        target = self.network_dtype
        for module in self.cast_modules():
            if module is not None and next(module.parameters()).dtype != target:
                module.to(target)
        return self

    def cast_modules(self) -> list[Any]:
        """The modules that run in :attr:`network_dtype` (None: absent)."""
        return [self.net, self.text_encoder]

    # ---- records -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        info = super().describe()
        embeds = self.prompt_embeds
        digest = None
        if embeds.device.type != "meta":
            data = embeds.detach().float().cpu().contiguous().numpy().tobytes()
            digest = hashlib.sha256(data).hexdigest()
        info["conditioning"] = {
            "prompt": self.prompt, "labels_in_prompt": self.is_template,
            "class_names": self.class_names, "embedding_shape": list(embeds.shape),
            "embedding_sha256": digest,
            "text_encoder": None if self.text_encoder is None else type(self.text_encoder).__name__}
        info["network_dtype"] = str(self.network_dtype).replace("torch.", "")
        return info


def _add_inner(out, prefix, block, mid=False):
    """A block's resnets and attentions in the order they run, then the block itself."""
    resnets = list(block.resnets)
    attentions = list(getattr(block, "attentions", None) or [])
    if mid:  # resnet, then (attention, resnet) pairs
        order = [("resnets", 0, resnets[0])]
        for j, attn in enumerate(attentions):
            order += [("attentions", j, attn), ("resnets", j + 1, resnets[j + 1])]
    else:  # (resnet, attention) pairs
        order = []
        for j, resnet in enumerate(resnets):
            order.append(("resnets", j, resnet))
            if j < len(attentions):
                order.append(("attentions", j, attentions[j]))
    for kind, j, module in order:
        out[f"{prefix}.{kind}.{j}"] = module
    out[prefix] = block


# ---- building a model ----------------------------------------------------------------------

def create(name: str, spec: Mapping[str, Any], checkpoint: Any = None, random_init: bool = False,
           trust_checkpoint: bool = False) -> SDExtractor:
    """An SD extractor from a registry entry (its hub id) or the family with a checkpoint
    (a diffusers folder, a hub id or a single file).  Options (``--config``/keywords):
    ``prompt``, ``torch_dtype`` (auto|float32|float16|bfloat16), ``attention_slice``
    (auto|max|N) and ``vae`` (another VAE: a folder, a hub id or "random")."""
    options = _options(spec.get("config", {}))
    located = sd_load.locate(name, spec, checkpoint, random_init)
    parts = build_parts(name, located, options, sd_load, "sd")
    unet = parts["unet"]
    _check_unet(unet, name, located["source"])
    vae, vae_label, factor = fit_vae(parts, options, located)
    width = unet.config.cross_attention_dim
    if parts["text_encoder"] is not None:
        embeds = torch.zeros(0, parts["tokenizer"].model_max_length, width)
    else:
        embeds = torch.zeros(1, 77, width)  # SD's token count; a random init has no tokenizer
    model = SDExtractor(
        unet, text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        prompt=options["prompt"], torch_dtype=options["torch_dtype"], embeds=embeds,
        name=name, schedule=PipelineSchedule(parts["scheduler"]),
        image_size=unet.config.sample_size * factor, image_channels=vae.config.in_channels,
        vae=vae, vae_scale=vae.config.scaling_factor,
        config={"in_channels": unet.config.in_channels, "input_size": unet.config.sample_size,
                "unet": _plain(unet.config), "prompt": options["prompt"],
                "torch_dtype": options["torch_dtype"],
                "attention_slice": options["attention_slice"], "vae": vae_label},
        source=located["source"])
    if parts["text_encoder"] is not None and not model.is_template:
        model.set_prompts([options["prompt"]])  # in float32, before settling
    model.settle_dtype()
    if model.prompt_embeds.shape[-1] != width:
        raise ProbeError(f"{located['source']}: the text encoder's width "
                         f"{model.prompt_embeds.shape[-1]} does not fit the U-Net's "
                         f"cross_attention_dim {width}")
    return model


def build_parts(name: str, located: Mapping[str, Any], options: Mapping[str, Any],
                loader: Any, family: str) -> dict[str, Any]:
    """The pipeline's parts (``loader``: the family's load module): random ones for a
    registry architecture under --random-init (which builds no text encoder, so a prompt
    is refused), else those of the located folder."""
    if located["kind"] == "random":
        if name not in loader.ARCHITECTURES:
            raise ProbeError(f"--random-init needs a registry architecture: "
                             f"{' or '.join(loader.ARCHITECTURES)} (the {family} family has "
                             "no default one)")
        if options["prompt"]:
            raise ProbeError("--random-init builds no text encoder (the conditioning is zeros): "
                             "drop --prompt")
        return loader.random_parts(loader.ARCHITECTURES[name])
    _need_transformers()
    return loader.load_parts(located)


def fit_vae(parts: Mapping[str, Any], options: Mapping[str, Any],
            located: Mapping[str, Any]) -> tuple[Any, str, int]:
    """(the VAE, its label, its downsampling factor), checked against the U-Net's input;
    the U-Net's attention slicing set as asked."""
    unet = parts["unet"]
    vae, vae_label = _vae(parts["vae"], options["vae"], located)
    if vae.config.latent_channels != unet.config.in_channels:
        raise ProbeError(f"the VAE {vae_label} makes {vae.config.latent_channels}-channel latents "
                         f"but the U-Net takes {unet.config.in_channels} channels")
    if options["attention_slice"] is not None:
        unet.set_attention_slice(options["attention_slice"])
    return vae, vae_label, 2 ** (len(vae.config.block_out_channels) - 1)


def _need_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ProbeError("the sd family needs transformers for its text encoder: "
                         "pip install probe-diffusion[sd]") from None


_TAKES = ("it takes prompt, torch_dtype (auto|float32|float16|bfloat16), attention_slice "
          "(auto|max|N, off by default) and vae")


def _options(given):
    # None keeps the default prompt ("") and dtype ("auto"); vae=None is refused in _vae
    options = read_config(given, dict(prompt=None, torch_dtype=None, attention_slice=None,
                                      vae=_NO_VAE_GIVEN), "sd option", _TAKES,
                          types=dict(prompt=str, torch_dtype=str, attention_slice=None, vae=None))
    options["prompt"] = options["prompt"] or ""
    options["torch_dtype"] = options["torch_dtype"] or "auto"
    if options["torch_dtype"] != "auto" and options["torch_dtype"] not in NET_DTYPES:
        raise ProbeError(f"bad torch_dtype {options['torch_dtype']!r}: use auto, "
                         f"{', '.join(NET_DTYPES)}")
    options["attention_slice"] = _attention_slice(options["attention_slice"])
    return options


def _attention_slice(value):
    """auto | max | a slice size; None or a false spelling (config.is_off) switches it off."""
    if is_off(value):
        return None
    if value in ("auto", "max"):
        return value
    try:
        size = coerce("attention_slice", value, int, "sd option")
    except ProbeError:
        size = 0
    if size < 1:
        raise ProbeError(f"bad attention_slice {value!r}: use auto, max, a positive integer "
                         "(the slice size) or false (off)")
    return size


def _check_unet(unet, name, source):
    c = unet.config
    if c.get("addition_embed_type") == "text_time":
        raise ProbeError(f"{source}: an SDXL U-Net (addition_embed_type text_time): use the "
                         "sdxl family (--model sdxl)")
    if c.get("class_embed_type") or c.get("num_class_embeds") or c.get("addition_embed_type"):
        raise ProbeError(f"{source}: a U-Net with extra conditioning (class or added "
                         "embeddings, e.g. the upscaler) is not supported yet")
    arch = sd_load.ARCHITECTURES.get(name)
    if arch is None:
        return
    wrong = [f"{k}={_norm(c.get(k))} (not {_norm(v)})" for k, v in arch.items()
             if _norm(c.get(k)) != _norm(v)]
    if wrong:
        raise ProbeError(f"{source} does not fit {name}: its U-Net has {', '.join(wrong[:3])}; "
                         "use the family 'sd' (--model sd) to take its own config")


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _plain(config):
    return {k: _norm(v) for k, v in dict(config).items() if not k.startswith("_")}


def _vae(own, given, located):
    """The pipeline's VAE, or the one given (``--vae``); its decoder is never used."""
    if given is _NO_VAE_GIVEN:
        vae, label = own, "random" if located["kind"] == "random" else f"{located['source']}/vae"
    else:
        if given is None or given == "none":
            raise ProbeError("the sd family works on VAE latents: --vae takes a folder, a hub id "
                             "or 'random', not none")
        from ..dit.diffusers_format import load_vae, vae_label

        vae, label = load_vae(given), str(vae_label(given, None))
    vae.decoder = None  # as DIFT does: only the encoder runs, and the decoder is half the VAE
    return vae, label
