"""Write the tiny random Stable Diffusion pipeline of the tests (tests/fixtures/tiny-sd/).

It has SD's parts and layout (a diffusers folder with unet/, vae/, text_encoder/, tokenizer/,
scheduler/ and model_index.json), its block types (cross-attention down and up blocks, a plain
down block, a plain up block, a cross-attention mid block) and its scheduler config, at toy
size: 16 px images, 8x8x4 latents, a 2-layer CLIP text encoder of width 16 whose tokenizer
knows single bytes only (no merges), so it needs no download.

    python scripts/make_tiny_sd.py [OUT]      # default tests/fixtures/tiny-sd
    python scripts/make_tiny_sd.py --manifests

``--manifests`` writes tests/fixtures/reference/manifests/sd-*-unet.json instead: the
``unet/config.json`` of stable-diffusion-v1-5 and stable-diffusion-2-1-base as published on
the hub (written out here, not downloaded), and the state-dict keys and shapes that
diffusers' ``UNet2DConditionModel`` builds from it on the meta device.
"""
import json
import os
import shutil
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "fixtures", "tiny-sd")
WIDTH = 16  # text encoder width = the U-Net's cross_attention_dim


def byte_alphabet():
    """The 256 printable stand-ins CLIP's byte-level BPE uses for bytes (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tokenizer(folder):
    from transformers import CLIPTokenizer

    chars = byte_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab, "w") as fh:
        json.dump({t: i for i, t in enumerate(tokens)}, fh)
    with open(merges, "w") as fh:
        fh.write("#version: 0.2\n")
    return CLIPTokenizer(vocab, merges, model_max_length=77), len(tokens)


def build(tmp):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 8, 16), norm_num_groups=4, attention_head_dim=2,
        cross_attention_dim=WIDTH,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    tok, vocab_size = tokenizer(tmp)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=2 * WIDTH,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    # Stable Diffusion 1.x/2.x-base's own scheduler config.
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False,
                              skip_prk_steps=True, steps_offset=1)
    with torch.no_grad():  # off the init values (zero biases, unit norms): every weight counts
        for module in (unet, vae, text_encoder):
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
HUB_UNET_CONFIGS = {
    "sd-1.5": {  # stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
        "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False, "cross_attention_dim": 768, "down_block_types": _DOWN,
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": 32, "out_channels": 4, "sample_size": 64, "up_block_types": _UP},
    "sd-2.1-base": {  # stabilityai/stable-diffusion-2-1-base, unet/config.json
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0",
        "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
        "cross_attention_dim": 1024, "down_block_types": _DOWN, "downsample_padding": 1,
        "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
        "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None,
        "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
        "up_block_types": _UP, "use_linear_projection": True},
}
MANIFESTS = os.path.join(HERE, "..", "tests", "fixtures", "reference", "manifests")


def manifests(folder=MANIFESTS):
    from diffusers import UNet2DConditionModel

    for name, config in HUB_UNET_CONFIGS.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        shapes = {k: list(v.shape) for k, v in unet.state_dict().items()}
        path = os.path.join(folder, f"{name}-unet.json")
        with open(path + ".tmp", "w") as fh:
            json.dump({"config": config, "state_dict": shapes}, fh, indent=0)
        os.replace(path + ".tmp", path)
        print(f"wrote {path} ({len(shapes)} tensors)")


def main(out=DEFAULT_OUT):
    if out == "--manifests":
        return manifests()
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        pipe = build(tmp)
        staged = os.path.join(tmp, "pipe")
        pipe.save_pretrained(staged, safe_serialization=True)
        for name in ("vocab.json", "merges.txt"):  # transformers 4's CLIPTokenizer reads these
            shutil.copy(os.path.join(tmp, name), os.path.join(staged, "tokenizer", name))
        for root, _, files in os.walk(staged):
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staged, out)  # the folder appears only when whole
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({size / 1024:.0f} kB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
