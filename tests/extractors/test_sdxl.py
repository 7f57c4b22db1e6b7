"""The sdxl family against diffusers' own SDXL pipeline: a tiny random SDXL-shaped folder
built here (two CLIP text encoders, a text_time U-Net, a VAE, a scheduler) and saved with
save_pretrained; the oracle is StableDiffusionXLPipeline's own encode_prompt and
_get_add_time_ids, and its U-Net's forward with hooks on the same modules."""
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

import probe
from probe.errors import ProbeError

TINY_SD = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-sd"
SIDE = 16  # image side: an 8x8 latent through a 2-level VAE


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny SDXL pipeline folder: text encoders of width 16 and 24 (the U-Net's cross
    attention takes 40), a pooled projection of 8, time ids embedded in 4 each."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPTokenizer)

    torch.manual_seed(0)
    text = dict(vocab_size=514, intermediate_size=32, num_attention_heads=2,
                num_hidden_layers=3, max_position_embeddings=77, bos_token_id=0,
                eos_token_id=1, pad_token_id=1)
    enc1 = CLIPTextModel(CLIPTextConfig(hidden_size=16, **text))
    enc2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=24, projection_dim=8, **text))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2,
        norm_num_groups=4, cross_attention_dim=40, transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(8, 16), norm_num_groups=4, sample_size=SIDE,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear")
    tok = CLIPTokenizer.from_pretrained(str(TINY_SD / "tokenizer"))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=enc1, text_encoder_2=enc2,
                                     tokenizer=tok, tokenizer_2=tok, unet=unet,
                                     scheduler=scheduler)
    out = tmp_path_factory.mktemp("tiny-sdxl") / "pipe"
    pipe.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(folder)).to(torch.float32)


@pytest.fixture(scope="module")
def model(folder):
    return probe.load_model("sdxl", checkpoint=str(folder))


def conditioning(pipe, prompts):
    """(prompt_embeds, pooled, time_ids) exactly as the pipeline's __call__ builds them."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    times = pipe._get_add_time_ids((SIDE, SIDE), (0, 0), (SIDE, SIDE), dtype=embeds.dtype,
                                   text_encoder_projection_dim=pipe.text_encoder_2.config
                                   .projection_dim)
    return embeds, pooled, times.expand(len(prompts), -1)


def reference_run(pipe, names, x, t, cond):
    """diffusers' U-Net with hooks on the modules of those names: (outputs, order, out)."""
    embeds, pooled, times = cond
    got, order, handles = {}, [], []
    for name in names:
        def hook(_, __, out, name=name):
            got[name] = out[0] if isinstance(out, tuple) else out
            order.append(name)
        handles.append(pipe.unet.get_submodule(name).register_forward_hook(hook))
    try:
        out = pipe.unet(x, t, encoder_hidden_states=embeds,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": times}).sample
    finally:
        for h in handles:
            h.remove()
    return got, order, out


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([261, 10])


def close(got, want):
    # Both sides run the same diffusers modules in float32; only the kernels' summation
    # order may differ between CPUs (AVX2 / AVX-512), which moves a sum of n terms by about
    # n * eps * its scale: 1e-5 of the outputs' own scale is a few hundred ulps here.
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=0)


def test_conditioning_is_encode_prompts(model, pipe):
    embeds, pooled, times = conditioning(pipe, [""])
    # the conditional "" is encoded, not zeroed: force_zeros_for_empty_prompt zeros only the
    # negative branch of classifier-free guidance
    assert pipe.config.force_zeros_for_empty_prompt and pooled.abs().sum() > 0
    assert model.prompt_embeds.shape == (1, 77, 40) and model.pooled_embeds.shape == (1, 8)
    close(model.prompt_embeds, embeds)
    close(model.pooled_embeds, pooled)
    assert model.time_ids(SIDE, SIDE).tolist() == times.tolist()
    # buffers, so the features' weights_sha256 covers the conditioning
    assert {"prompt_embeds", "pooled_embeds"} <= set(model.state_dict())
    info = model.describe()["conditioning"]
    assert info["time_ids"] == [SIDE, SIDE, 0, 0, SIDE, SIDE] and info["text_embeds_sha256"]


def test_blocks_and_output_equal_diffusers_forward(model, pipe):
    pattern = re.compile(r"conv_in|(down_blocks\.\d+|up_blocks\.\d+|mid_block)"
                         r"(\.(resnets|attentions)\.\d+)?")
    expected = {n for n, _ in pipe.unet.named_modules() if pattern.fullmatch(n)}
    assert set(model.block_names) == expected and "mid_block.attentions.0" in expected
    x, t = inputs()
    ref, order, ref_out = reference_run(pipe, model.block_names, x, t, conditioning(pipe, [""] * 2))
    assert order == model.block_names  # forward order: each block after what runs inside it
    feats = model.forward_intermediates(x, t, "all", stop_early=False)
    for name in model.block_names:
        close(feats[name], ref[name])
    close(model(x, t), ref_out)
    # the time ids matter: another image size gives another output
    other = conditioning(pipe, [""] * 2)
    other = (other[0], other[1], other[2] * 2)
    assert (reference_run(pipe, [], x, t, other)[2] - ref_out).abs().max() > 1e-4


def test_class_prompt_fills_each_images_class_name(folder, pipe):
    m = probe.load_model("sdxl", checkpoint=str(folder), prompt="a photo of a {class}")
    with pytest.raises(ProbeError, match="use_class_names"):
        m(torch.zeros(1, 4, 8, 8), 10, y=0)
    m.use_class_names(["cat", "dog"])
    cond = conditioning(pipe, ["a photo of a dog", "a photo of a cat"])
    x, t = inputs(3)
    close(m(x, t, y=[1, 0]), reference_run(pipe, [], x, t, cond)[2])
    with pytest.raises(ProbeError, match="--true-labels .*--class-label N"):
        m(x, t)  # the class names are never used silently
    with pytest.raises(ProbeError, match="no class names"):
        m.use_class_names([])


def test_vae_runs_in_float32_whatever_the_unet(folder, pipe):
    half = probe.load_model("sdxl", checkpoint=str(folder), torch_dtype="bfloat16")
    assert half.net.dtype == torch.bfloat16 and half.text_encoder_2.dtype == torch.bfloat16
    half.to(torch.float16)  # a cast of the whole model leaves the VAE in float32
    assert half.vae.dtype == torch.float32 and half.net.dtype == torch.bfloat16
    images = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    ref = pipe.vae.encode(images * 2 - 1).latent_dist.mean * 0.13025
    close(half.prepare(images), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # not even under a caller's autocast
        assert half.prepare(images).dtype == torch.float32


def test_a_folder_without_text_encoder_2_is_named(folder, tmp_path):
    broken = tmp_path / "pipe"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(ProbeError, match=r"has no text_encoder_2/.*text_encoder_2/") as err:
        probe.load_model("sdxl", checkpoint=str(broken))
    assert "\n" not in str(err.value)
    with pytest.raises(ProbeError, match="use the sdxl family"):
        probe.load_model("sd", checkpoint=str(folder))  # the sd family points here


def test_hub_id_offline_fails_fast_with_the_one_line_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(ProbeError) as err:
        probe.load_model("sdxl-base-1.0")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and "stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "--checkpoint FOLDER" in message


def test_probe_blocks_lists_the_blocks(folder, capsys):
    from probe.cli import main

    assert main(["blocks", "sdxl", "--checkpoint", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {r.split()[1]: r for r in lines[2:]}
    assert rows["conv_in"].split()[0] == "1"
    assert rows["up_blocks.0.attentions.1"].endswith("(16, 4, 4)")
    assert rows["up_blocks.0"].endswith("(16, 8, 8)")  # after its upsampler


def test_registry_unet_is_sdxl_base():
    from probe.extractors.registry import load_architecture

    model = load_architecture("sdxl-base-1.0")  # meta device: no download, no memory
    # the SDXL base U-Net's published size: 2,567,463,684 parameters
    assert sum(p.numel() for p in model.net.parameters()) == 2_567_463_684
    assert (model.image_size, model.input_shape) == (1024, (4, 128, 128))
    assert model.describe()["conditioning"]["time_ids"] == [1024, 1024, 0, 0, 1024, 1024]
