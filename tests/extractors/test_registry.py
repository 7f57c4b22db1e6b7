import json
import math
import os
import re

import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.extractors.registry import ALIASES, MODELS
from refdata import REFERENCE
from tolerances import assert_close_f32

TINY_DIT = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2,
                num_classes=0, learn_sigma=False)


def test_random_init_is_seeded_not_global_rng():
    a = probe.load_model("dit", random_init=True, **TINY_DIT)
    torch.manual_seed(123)
    b = probe.load_model("dit", random_init=True, **TINY_DIT)
    c = probe.load_model("dit", random_init=True, init_seed=1, **TINY_DIT)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # exact: same seed, same machine
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name, message", [
    ("dit-xl2", "did you mean dit-xl-2"), ("adm256", "did you mean"), ("nonsense", "probe models")])
def test_unknown_names_suggest(name, message):
    with pytest.raises(ProbeError, match=message):
        probe.load_model(name)


def test_models_without_released_weights_say_so():
    with pytest.raises(ProbeError, match="no released weights"):
        probe.load_model("dit-l", vae=None)
    with pytest.raises(ProbeError, match="not both"):
        probe.load_model("adm-64", checkpoint="x.pt", random_init=True)


def test_probe_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list(MODELS) + list(ALIASES):
        assert name in out


def test_probe_blocks_matches_the_released_manifest(capsys):
    assert main(["blocks", "adm-256-uncond"]) == 0
    rows = {m.group(2): (int(m.group(1)), m.group(3)) for m in
            re.finditer(r"^\s*(\d+)\s+(\S+)\s+(\(.*\))$", capsys.readouterr().out, re.M)}
    assert len(rows) == 37 and rows["output_blocks.4"][0] == 24 and rows["middle_block"][0] == 19
    with open(os.path.join(REFERENCE, "manifests", "adm_256x256_diffusion_uncond.json")) as fh:
        sd = json.load(fh)["state_dict"]
    # a block's output channels are those of its last conv in the released checkpoint
    channels = sd["output_blocks.4.0.out_layers.3.weight"][0]
    assert rows["output_blocks.4"][1] == f"({channels}, 16, 16)"
    assert main(["blocks", "dit-xl-2"]) == 0
    out = capsys.readouterr().out
    hidden = json.load(open(os.path.join(REFERENCE, "manifests", "DiT-XL-2-256x256.json")))[
        "state_dict"]["blocks.27.attn.proj.weight"][0]
    assert f"blocks.27            (256, {hidden})" in out


# ---- schedules, VAE and aliases of the registry entries ---------------------------------------

def _linear_abar():
    # DDPM's linear schedule (Ho et al. 2020), as DiT and guided-diffusion define it
    return np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


def _cosine_abar():
    # guided-diffusion's cosine schedule (Nichol & Dhariwal 2021), betas clipped at 0.999
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.cumprod([1 - min(1 - f(i + 1) / f(i), 0.999) for i in range(1000)])


def _scaled_linear_abar():
    # Stable Diffusion's (CompVis ldm "linear"): betas linear in sqrt from 0.00085 to 0.012
    return np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2)


# adm-64 is the one released model trained with the cosine schedule (guided-diffusion README)
@pytest.mark.parametrize("name", [n for n in MODELS if not MODELS[n].get("file")])
@pytest.mark.numerics
def test_each_released_entry_has_its_schedule(name):
    with torch.device("meta"):
        model = probe.load_model(name, random_init=True,
                                 **({"vae": None} if "dit" in name or "sit" in name else {}))
    if MODELS[name]["family"] == "sit":  # flow matching: SiT's or REPA's linear interpolant
        assert model.schedule.convention == ("repa" if name.startswith("repa-") else "sit")
        return
    want = _cosine_abar() if name == "adm-64" else _linear_abar()
    if MODELS[name]["family"] in ("sd", "sdxl"):  # SDXL trains on SD's betas too
        want = _scaled_linear_abar()
    # a product of 1000 factors whose betas diffusers rounds to float32: relative errors
    assert_close_f32(model.schedule.alphas_cumprod, want, n=1000, scale=np.abs(want))


@pytest.mark.numerics
def test_dit_q_sample_is_the_ddpm_forward_process():
    model = probe.load_model("dit-fmnist")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    t = torch.tensor([0, 100, 999])
    abar = torch.tensor(_linear_abar()[[0, 100, 999]], dtype=torch.float32).view(3, 1, 1, 1)
    assert_close_f32(model.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise,
                     n=4)


def test_released_dits_carry_the_sd_vae(monkeypatch):
    from diffusers import AutoencoderKL

    from probe.extractors.dit import extractor as dit

    asked = []

    def offline(source, subfolder=None):
        asked.append(source)
        raise ProbeError(f"could not load the VAE {source}")

    monkeypatch.setattr(dit, "load_vae", offline)
    with torch.device("meta"), pytest.raises(ProbeError, match="sd-vae-ft-ema"):
        probe.load_model("dit-xl-2", random_init=True)
    assert asked == ["stabilityai/sd-vae-ft-ema"]
    monkeypatch.undo()
    with torch.device("meta"):
        model = probe.load_model("dit-xl-2", random_init=True, vae="random")
    # DiT's sample.py: latents = vae.encode(x).latent_dist.sample() * 0.18215, 8x downsampling
    assert isinstance(model.vae, AutoencoderKL) and model.vae_scale == 0.18215
    assert model.vae.config.latent_channels == 4 and model.input_shape == (4, 32, 32)
    assert model.image_size == 256


@pytest.mark.parametrize("alias, hidden, depth", [("dit-b", 768, 12), ("dit-l", 1024, 24),
                                                  ("dit-xl", 1152, 28)])
def test_aliases_build_the_paper_sizes(alias, hidden, depth):
    # DiT paper, Table 1: B 768/12, L 1024/24, XL 1152/28
    with torch.device("meta"):
        model = probe.load_model(alias, random_init=True, vae=None)
    assert model.name == ALIASES[alias] and len(model.block_names) == depth
    assert model.net.state_dict()["blocks.0.attn.qkv.weight"].shape == (3 * hidden, hidden)
    if alias != "dit-xl":
        with pytest.raises(ProbeError, match="no released weights"):
            probe.load_model(alias, vae=None)


def unfold_block_list(listing):
    """'a.0..2 (ids 1-3), b (4)' -> names, checking each id against its position."""
    names = []
    for part in listing.split(", "):
        part, _, ids = part.partition(" (")
        ids = ids.rstrip(")").removeprefix("ids ").split("-")
        assert int(ids[0]) == len(names) + 1  # the id of a name is its 1-based position
        if ".." in part:
            first, last = part.split("..")
            prefix, _, lo = first.rpartition(".")
            names += [f"{prefix}.{i}" for i in range(int(lo), int(last) + 1)]
        else:
            names.append(part)
    return names


def test_unknown_block_lists_every_valid_block():
    with torch.device("meta"):
        model = probe.load_model("adm-256", random_init=True)
    with pytest.raises(ProbeError) as err:
        model.resolve_blocks("midle_block")
    msg = str(err.value)
    assert "did you mean middle_block" in msg and "probe blocks adm-256" in msg and "\n" not in msg
    listing = msg.split("; it has ")[1].split(" (`probe blocks")[0]
    assert unfold_block_list(listing) == model.block_names
    with pytest.raises(ProbeError, match="block id 38 is out of range: adm-256 has blocks 1..37"):
        model.resolve_blocks(38)
    with pytest.raises(ProbeError, match="no blocks given"):
        model.resolve_blocks([])
    assert model.resolve_blocks([np.int64(24)]) == ["output_blocks.4"]


def test_probe_blocks_at_another_image_size(capsys):
    def shapes(argv):
        assert main(argv) == 0
        return {m.group(1): eval(m.group(2)) for m in
                re.finditer(r"^\s*\d+\s+(\S+)\s+(\(.*\))$", capsys.readouterr().out, re.M)}

    at64, at128 = shapes(["blocks", "adm-64"]), shapes(["blocks", "adm-64", "--image-size", "128"])
    assert at64.keys() == at128.keys()
    for name, (c, h, w) in at64.items():  # a fully convolutional net: maps scale with the input
        assert at128[name] == (c, 2 * h, 2 * w)


def test_probe_blocks_of_a_family_checkpoint_matches_the_reference(capsys):
    ref = os.path.join(REFERENCE, "adm")
    io = torch.load(os.path.join(ref, "adm_tiny_uncond.io.pt"), weights_only=True)
    assert main(["blocks", "adm", "--checkpoint", os.path.join(ref, "adm_tiny_uncond.pt"),
                 "--config", os.path.join(ref, "adm_tiny_uncond.json")]) == 0
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\s*\d+\s+(\S+)\s+(\(.*\))$", capsys.readouterr().out, re.M)}
    assert rows == {k: str(tuple(v.shape[1:])) for k, v in io["features"].items()}
    assert main(["blocks", "adm"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err


def test_block_shapes_api_without_weights():
    from probe.extractors.registry import block_shapes

    # ldae-fmnist (model card): 28 px, patch 7 -> 16 tokens of hidden size 128, depth 4
    assert block_shapes("ldae-fmnist") == [(i + 1, f"blocks.{i}", (16, 128)) for i in range(4)]
    # the released 256 px U-Net, built on the meta device: nothing is downloaded
    shapes = block_shapes("adm-256-uncond")
    assert len(shapes) == 37 and shapes[18][1:] == ("middle_block", (1024, 8, 8))
    at512 = dict((n, s) for _, n, s in block_shapes("adm-256-uncond", image_size=512))
    assert at512["middle_block"] == (1024, 16, 16)
    with pytest.raises(ProbeError, match="applies to convolutional pixel-space models"):
        block_shapes("dit-xl-2", image_size=512)
    with pytest.raises(ProbeError, match="needs --checkpoint"):
        block_shapes("adm")


def test_block_shapes_of_a_family_checkpoint_match_the_reference():
    from probe.extractors.registry import block_shapes

    ref = os.path.join(REFERENCE, "adm")
    io = torch.load(os.path.join(ref, "adm_tiny_uncond.io.pt"), weights_only=True)
    with open(os.path.join(ref, "adm_tiny_uncond.json")) as fh:
        config = json.load(fh)
    shapes = block_shapes("adm", checkpoint=os.path.join(ref, "adm_tiny_uncond.pt"), config=config)
    assert [(n, s) for _, n, s in shapes] == [
        (k, tuple(v.shape[1:])) for k, v in io["features"].items()]
