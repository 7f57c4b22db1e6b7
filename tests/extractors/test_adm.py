"""ADM U-Net: checked against outputs of the original guided-diffusion code (reference
fixtures) and against the released checkpoints' key/shape manifests."""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.extractors import registry
from probe.extractors.adm.extractor import create, parse_flags
from probe.extractors.hooks import capture, run_until_stop
from tolerances import assert_close_f32, assert_close_net

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
TINY = ["adm_tiny_uncond", "adm_tiny_cond_neworder"]
MANIFESTS = {
    "adm-256-uncond": "adm_256x256_diffusion_uncond",
    "adm-256": "adm_256x256_diffusion",
    "adm-128": "adm_128x128_diffusion",
    "adm-512": "adm_512x512_diffusion",
    "adm-64": "adm_64x64_diffusion",
}
# The 64x64 model's flags as printed in guided-diffusion's README.
README_64_FLAGS = ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 "
                   "--dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine "
                   "--num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
                   "--resblock_updown True --use_new_attention_order True --use_fp16 True "
                   "--use_scale_shift_norm True")


def config(name):
    return json.loads((REF / "adm" / f"{name}.json").read_text())


def ckpt(name):
    return str(REF / "adm" / f"{name}.pt")


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    name = request.param
    io = torch.load(REF / "adm" / f"{name}.io.pt", weights_only=True)
    model = probe.load_model("adm", checkpoint=ckpt(name), **config(name))
    return name, model, io


def manifest(entry):
    return json.loads((REF / "manifests" / f"{MANIFESTS[entry]}.json").read_text())


# ---- numerics against the original code ---------------------------------------------------

@pytest.mark.numerics
def test_output_and_every_block_match_original(tiny):
    _, model, io = tiny
    with torch.no_grad():
        out = model(io["x"], io["t"], io["y"])
        feats = model.forward_intermediates(io["x"], io["t"], "all", y=io["y"])
    assert_close_net(out, io["out"], what="out")
    assert list(feats) == list(io["features"])  # same blocks, same forward order
    for name, ref in io["features"].items():
        assert_close_net(feats[name], ref, what=name)


def test_stop_early_gives_identical_tensors_and_skips_the_rest(tiny):
    _, model, io = tiny
    calls = []
    handle = model.net.out.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            early = model.forward_intermediates(io["x"], io["t"], "input_blocks.2", y=io["y"])
            assert calls == []  # the output head never ran
            full = model.forward_intermediates(io["x"], io["t"], "input_blocks.2", y=io["y"],
                                               stop_early=False)
            assert calls == [1]
    finally:
        handle.remove()
    # exact: same machine, same kernels, same inputs
    assert torch.equal(early["input_blocks.2"], full["input_blocks.2"])


def test_hooks_are_removed_when_the_forward_raises(tiny, monkeypatch):
    _, model, io = tiny
    modules = model._block_modules()
    before = {n: len(m._forward_hooks) for n, m in modules.items()}

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model.net.middle_block, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        model.forward_intermediates(io["x"], io["t"], "all", y=io["y"])
    assert {n: len(m._forward_hooks) for n, m in modules.items()} == before


@pytest.mark.numerics
def test_use_fp16_and_use_checkpoint_are_accepted_and_run_in_float32():
    name = "adm_tiny_uncond"
    io = torch.load(REF / "adm" / f"{name}.io.pt", weights_only=True)
    model = probe.load_model("adm", checkpoint=ckpt(name),
                             **{**config(name), "use_fp16": True, "use_checkpoint": True})
    with torch.no_grad():
        out = model(io["x"], io["t"])
    assert out.dtype == torch.float32
    assert_close_net(out, io["out"])


@pytest.mark.numerics
def test_rescale_timesteps_feeds_t_scaled_to_1000_steps():
    # guided-diffusion: with rescale_timesteps the net sees t * 1000 / diffusion_steps.
    name = "adm_tiny_uncond"
    io = torch.load(REF / "adm" / f"{name}.io.pt", weights_only=True)
    scaled = probe.load_model("adm", checkpoint=ckpt(name), diffusion_steps=4000,
                              rescale_timesteps=True, **config(name))
    with torch.no_grad():
        out = scaled(io["x"], io["t"] * 4)
    assert_close_net(out, io["out"])


# ---- user errors ------------------------------------------------------------------------------

def test_class_conditional_model_demands_labels():
    name = "adm_tiny_cond_neworder"
    model = probe.load_model("adm", checkpoint=ckpt(name), **config(name))
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ProbeError, match="labels"):
        model.forward_intermediates(x, 10, "all")
    with pytest.raises(ProbeError, match="0..999"):
        model(x, 10, y=1000)


@pytest.mark.parametrize("cfg, weights, key", [
    ("adm_tiny_uncond", "adm_tiny_cond_neworder", "label_emb.weight"),
    ("adm_tiny_cond_neworder", "adm_tiny_uncond", "label_emb.weight"),
])
def test_checkpoint_of_another_architecture_names_the_mismatch(cfg, weights, key):
    with pytest.raises(ProbeError) as err:
        probe.load_model("adm", checkpoint=ckpt(weights), **config(cfg))
    msg = str(err.value)
    assert "\n" not in msg and key in msg and "does not fit" in msg


def test_pickled_checkpoint_needs_trust(tmp_path):
    name = "adm_tiny_uncond"
    path = tmp_path / "train_state.pt"
    state = torch.load(ckpt(name), weights_only=True)
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(ProbeError, match="trust"):
        probe.load_model("adm", checkpoint=str(path), **config(name))
    model = probe.load_model("adm", checkpoint=str(path), trust_checkpoint=True, **config(name))
    assert all(torch.equal(v, state[k]) for k, v in model.net.state_dict().items())  # a copy
    assert model.source == str(path)


def _junk(kind, path):
    good = torch.load(ckpt("adm_tiny_uncond"), weights_only=True)
    if kind == "pickled_class":
        torch.save({"model": good, "args": argparse.Namespace(lr=1e-4)}, path)
    elif kind == "plain_pickle":
        import pickle

        with open(path, "wb") as fh:
            pickle.dump({"w": np.zeros(3)}, fh, protocol=4)
    elif kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[:4096])
    else:
        path.write_bytes({
            "text": b"hello world\n",
            "html": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
            "lfs": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n",
            "json": b'{"a": 1}', "zeros": bytes(10),
            "random": np.random.default_rng(0).bytes(300)}[kind])


@pytest.mark.parametrize("kind, message, trust", [
    ("pickled_class", "needs arbitrary unpickling", True),
    ("plain_pickle", "plain pickle", True),
    ("truncated", "damaged or incomplete", False),
    ("text", "not a PyTorch checkpoint", False),
    ("html", "HTML page", False),
    ("lfs", "git-lfs pointer", False),
    ("json", "not a PyTorch checkpoint", False),
    ("zeros", "not a PyTorch checkpoint", False),
    ("random", "not a PyTorch checkpoint", False),
])
def test_unreadable_checkpoints_say_what_they_are(tmp_path, capsys, kind, message, trust):
    path = tmp_path / "weights.pt"
    _junk(kind, path)
    argv = ["blocks", "adm", "--checkpoint", str(path),
            "--config", str(REF / "adm" / "adm_tiny_uncond.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    # only a file that really is a pickle needing code is sent to --trust-checkpoint
    assert ("--trust-checkpoint" in err) == trust
    if kind == "pickled_class":
        assert main(argv + ["--trust-checkpoint"]) == 0


def test_missing_checkpoint_and_family_without_weights():
    with pytest.raises(ProbeError, match="checkpoint not found"):
        probe.load_model("adm", checkpoint="no/such/file.pt", **config("adm_tiny_uncond"))
    with pytest.raises(ProbeError, match="random_init"):
        probe.load_model("adm", **config("adm_tiny_uncond"))


def test_released_url_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    spec = dict(family="adm", config=config("adm_tiny_uncond"), url="https://example.org/m.pt")
    with pytest.raises(ProbeError, match="--checkpoint PATH"):
        create("tiny", spec)


def test_unknown_or_mistyped_flag():
    with pytest.raises(ProbeError, match="did you mean num_channels"):
        probe.load_model("adm", random_init=True, num_channel=32)
    with pytest.raises(ProbeError, match="True or False"):
        probe.load_model("adm", random_init=True, class_cond="maybe")


# ---- released architectures -------------------------------------------------------------------

@pytest.mark.parametrize("entry", list(MANIFESTS))
def test_registry_entry_builds_the_released_architecture(entry):
    ref = manifest(entry)
    spec = registry.MODELS[entry]
    # The entry's flags agree with the released model's; channel_mult "" means "derive".
    assert {k: spec["config"][k] for k in ref["config"]} == ref["config"]
    assert set(spec["config"]) - set(ref["config"]) <= {"channel_mult"}
    assert spec["config"].get("channel_mult", "") == ""
    with torch.device("meta"):
        model = probe.load_model(entry, random_init=True)
    got = {k: list(v.shape) for k, v in model.net.state_dict().items()}
    assert got == ref["state_dict"]


def test_adm256_block_numbering():
    ref = manifest("adm-256")
    with torch.device("meta"):
        model = probe.load_model("adm-256", random_init=True)
    # Every block the checkpoint has weights for is a block, and nothing else.
    tops = {".".join(k.split(".")[:2]) if k.startswith(("input_", "output_")) else k.split(".")[0]
            for k in ref["state_dict"]}
    assert set(model.block_names) == tops - {"time_embed", "label_emb", "out"}
    assert model.resolve_blocks("24") == ["output_blocks.4"]
    assert model.resolve_blocks(19) == ["middle_block"]
    assert model.block_id("output_blocks.0") == 20


@pytest.mark.numerics
def test_readme_flags_build_the_64px_model_with_the_cosine_schedule():
    with torch.device("meta"):
        model = probe.load_model("adm", random_init=True, **parse_flags(README_64_FLAGS))
    got = {k: list(v.shape) for k, v in model.net.state_dict().items()}
    assert got == manifest("adm-64")["state_dict"]
    # guided-diffusion's cosine schedule (Nichol & Dhariwal 2021), betas clipped at 0.999.
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(1000)])
    want = np.cumprod(1 - betas)  # 1000 factors, betas rounded to float32: relative errors
    assert_close_f32(model.schedule.alphas_cumprod, want, n=1000, scale=np.abs(want))


def test_forward_runs_on_the_meta_device():
    name = "adm_tiny_cond_neworder"
    io = torch.load(REF / "adm" / f"{name}.io.pt", weights_only=True)
    with torch.device("meta"):
        model = probe.load_model("adm", random_init=True, **config(name))
        x, t, y = torch.empty(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), io["y"].to("meta")
    with capture(model._block_modules()) as out:
        run_until_stop(model._forward, x, t, y)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in io["features"].items()}
    assert all(v.device.type == "meta" for v in out.values())
