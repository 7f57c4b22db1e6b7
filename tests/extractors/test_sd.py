"""The sd family against diffusers' own Stable Diffusion pipeline: the tiny random pipeline
of tests/fixtures/tiny-sd (scripts/make_tiny_sd.py) loaded by diffusers itself, its U-Net
run with hooks on the same modules and the pipeline's own empty-prompt embedding; the
SD 1.5 / 2.1-base U-Nets against key/shape manifests from their hub configs."""
import json
import re
from pathlib import Path

import pytest
import torch

import probe
from probe.errors import ProbeError
from probe.extractors.registry import load_architecture
from tolerances import BF16_NETWORK, assert_close, assert_close_f32, assert_close_net

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-sd"
MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "manifests"
# Parameter counts of the released U-Nets, as published (e.g. 859,520,964 for SD 1.x).
PUBLISHED_PARAMS = {"sd-1.5": 859_520_964, "sd-2.1-base": 865_910_724}


@pytest.fixture(scope="module")
def model():
    return probe.load_model("sd", checkpoint=str(TINY))


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(TINY)).to(torch.float32)


def pipeline_embedding(pipe, prompts):
    return pipe.encode_prompt(prompts, "cpu", 1, False)[0]


def reference_run(pipe, names, x, t, emb):
    """diffusers' U-Net with hooks on the modules of those names: (outputs, order, out)."""
    got, order, handles = {}, [], []
    for name in names:
        def hook(_, __, out, name=name):
            got[name] = out[0] if isinstance(out, tuple) else out
            order.append(name)
        handles.append(pipe.unet.get_submodule(name).register_forward_hook(hook))
    try:
        out = pipe.unet(x, t, encoder_hidden_states=emb).sample
    finally:
        for h in handles:
            h.remove()
    return got, order, out


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([261, 10])


@pytest.mark.numerics
def test_blocks_and_output_equal_diffusers_forward(model, pipe):
    # the blocks are exactly conv_in and the down/mid/up blocks with their resnets and
    # attentions, named as diffusers names the modules
    pattern = re.compile(r"conv_in|(down_blocks\.\d+|up_blocks\.\d+|mid_block)"
                         r"(\.(resnets|attentions)\.\d+)?")
    expected = {n for n, _ in pipe.unet.named_modules() if pattern.fullmatch(n)}
    assert set(model.block_names) == expected
    x, t = inputs()
    emb = pipeline_embedding(pipe, [""] * 2)
    assert_close_net(model.prompt_embeds[0], emb[0], what="prompt embedding")
    ref, order, ref_out = reference_run(pipe, model.block_names, x, t, emb)
    assert order == model.block_names  # forward order: each block after what runs inside it
    feats = model.forward_intermediates(x, t, "all", stop_early=False)
    for name in model.block_names:
        assert_close_net(feats[name], ref[name], what=name)
    assert_close_net(model(x, t), ref_out, what="out")


def test_early_exit_gives_the_same_outputs_and_stops(model):
    x, t = inputs(1)
    full = model.forward_intermediates(x, t, ["down_blocks.1.attentions.0", "up_blocks.1"],
                                       stop_early=False)
    calls = []
    handle = model.net.up_blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        early = model.forward_intermediates(x, t, ["up_blocks.1", "down_blocks.1.attentions.0"])
    finally:
        handle.remove()
    assert calls == [] and list(early) == ["down_blocks.1.attentions.0", "up_blocks.1"]
    for name in early:
        assert torch.equal(early[name], full[name])  # exact: same machine, same kernels


@pytest.mark.numerics
def test_vae_and_noise_are_the_pipelines(model, pipe):
    from diffusers import DDIMScheduler, DDPMScheduler

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x0 = model.prepare(images)
    ref = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    assert model.vae_scale == 0.18215 == pipe.vae.config.scaling_factor
    assert_close_net(x0, ref)
    noise, t = torch.randn_like(x0), torch.tensor([261, 999])
    for cls in (DDPMScheduler, DDIMScheduler):  # DIFT noises with DDIMScheduler.add_noise
        sched = cls.from_pretrained(str(TINY), subfolder="scheduler")
        # diffusers' abar is a float32 product of 1000 factors (ours is float64)
        assert_close_f32(model.q_sample(x0, t, noise), sched.add_noise(x0, noise, t), n=1000)
    assert model.schedule.describe()["kind"] == "scaled_linear"


@pytest.mark.numerics
def test_class_prompt_fills_each_images_class_name(pipe):
    m = probe.load_model("sd", checkpoint=str(TINY), prompt="a photo of a {class}")
    with pytest.raises(ProbeError, match="use_class_names"):
        m(torch.zeros(1, 4, 8, 8), 10, y=0)
    m.use_class_names(["cat", "dog"])
    emb = pipeline_embedding(pipe, ["a photo of a cat", "a photo of a dog"])
    assert_close_net(m.prompt_embeds, emb)
    x, t = inputs(3)
    _, _, ref = reference_run(pipe, [], x, t, emb[[1, 0]])
    assert_close_net(m(x, t, y=[1, 0]), ref)
    with pytest.raises(ProbeError, match="--true-labels .*--class-label N"):
        m(x, t)  # the class names are never used silently
    assert m.describe()["conditioning"]["class_names"] == ["cat", "dog"]


@pytest.mark.numerics
def test_network_dtype_and_attention_slicing(model):
    x, t = inputs(4)
    ref = model(x, t)
    sliced = probe.load_model("sd", checkpoint=str(TINY), attention_slice="max")
    assert_close_net(sliced(x, t), ref)
    half = probe.load_model("sd", checkpoint=str(TINY), torch_dtype="bfloat16")
    assert model.net.dtype == torch.float32  # auto: float32 off CUDA
    assert half.net.dtype == torch.bfloat16 and half.vae.dtype == torch.float32
    assert half.describe()["network_dtype"] == "bfloat16"
    assert_close(half(x, t), ref, BF16_NETWORK)


@pytest.mark.parametrize("name", ["sd-1.5", "sd-2.1-base"])
def test_registry_unets_match_their_hub_manifests(name):
    manifest = json.loads((MANIFESTS / f"{name}-unet.json").read_text())
    model = load_architecture(name)  # meta device: no download, no memory
    assert next(model.net.parameters()).is_meta
    shapes = {k: list(v.shape) for k, v in model.net.state_dict().items()}
    assert shapes == manifest["state_dict"]
    assert sum(p.numel() for p in model.net.parameters()) == PUBLISHED_PARAMS[name]
    for key, value in manifest["config"].items():
        if not key.startswith("_"):
            got = model.net.config[key]
            assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert (model.image_size, model.input_shape) == (512, (4, 64, 64))


def test_probe_blocks_lists_sd_blocks(capsys):
    from probe.cli import main

    assert main(["blocks", "sd-1.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sd-1.5: 48 blocks")
    rows = {r.split()[1]: r for r in lines[2:]}
    # DIFT's up_ft_index=1: 1280 channels at 1/16 of the image side
    assert rows["up_blocks.1"].endswith("(1280, 32, 32)")
    assert "up_blocks.1.attentions.0" in rows and rows["conv_in"].split()[0] == "1"
