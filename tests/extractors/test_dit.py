"""DiT: checked against outputs of the original facebookresearch/DiT code (reference
fixtures), the released checkpoints' key/shape manifests, diffusers' own sin-cos table
and VAE, and format invariances (original .pt == diffusers folder)."""
import json
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import probe
from probe.errors import ProbeError
from probe.extractors.dit.extractor import to_diffusers
from tolerances import assert_close_f32, assert_close_net

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
CKPT = str(REF / "dit" / "dit_tiny.pt")
CONFIG = json.loads((REF / "dit" / "dit_tiny.json").read_text())
IO = torch.load(REF / "dit" / "dit_tiny.io.pt")
NULL = 1000
MANIFESTS = {"dit-xl-2": "DiT-XL-2-256x256", "dit-xl-2-512": "DiT-XL-2-512x512",
             "dit-l-2": "DiT-L-2-256x256", "dit-b-2": "DiT-B-2-256x256"}


def load(checkpoint=CKPT, **kw):
    return probe.load_model("dit", checkpoint=checkpoint, **{**CONFIG, **kw})


def assert_reproduces_reference(model):
    with torch.no_grad():
        out = model(IO["x"], IO["t"], IO["y"])
        feats = model.forward_intermediates(IO["x"], IO["t"], "all", y=IO["y"], stop_early=False)
    assert_close_net(out, IO["out"], what="out")
    assert list(feats) == list(IO["features"])  # blocks.0 .. blocks.3, forward order
    for name, ref in IO["features"].items():
        assert_close_net(feats[name], ref, what=name)


@pytest.fixture(scope="module")
def tiny():
    return load()


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("dit_diffusers")
    to_diffusers(tiny).save_pretrained(folder)
    return folder


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                         block_out_channels=(8, 8, 8, 8), norm_num_groups=4, sample_size=64,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub traffic and an empty hub cache, whatever the machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


# ---- the original format -----------------------------------------------------------------

@pytest.mark.numerics
def test_original_checkpoint_reproduces_reference(tiny):
    assert tiny.block_names == [f"blocks.{i}" for i in range(CONFIG["depth"])]
    assert (tiny.num_classes, tiny.null_class, tiny.vae) == (1000, NULL, None)
    # pixel-space when there is no VAE
    assert (tiny.image_size, tiny.image_channels) == (CONFIG["input_size"], CONFIG["in_channels"])
    assert_reproduces_reference(tiny)


def test_train_py_checkpoint_loads_the_ema_weights(tmp_path):
    ema = torch.load(CKPT)
    raw = {k: v + 1.0 for k, v in ema.items()}  # the non-EMA weights: must not be picked
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([param])
    param.sum().backward()
    opt.step()
    path = tmp_path / "0400000.pt"
    torch.save({"model": raw, "ema": ema, "opt": opt.state_dict()}, path)
    assert_reproduces_reference(load(str(path)))


@pytest.mark.numerics
def test_null_class_is_the_default_label(tiny):
    x, t = IO["x"], IO["t"]
    with torch.no_grad():
        default = tiny(x, t)
        null = tiny(x, t, torch.full((len(x),), NULL))
        real = tiny(x, t, torch.tensor([3, 3]))
    torch.testing.assert_close(default, null, atol=0, rtol=0)  # exact: same kernels, same input
    assert not torch.allclose(default, real)
    # the reference's second sample was run with y=1000
    assert_close_net(default[1], IO["out"][1])


def test_stop_early_gives_the_same_tensors_and_skips_later_blocks(tiny):
    ran = []
    handle = tiny.net.blocks[3].register_forward_hook(lambda *a: ran.append(1))
    try:
        with torch.no_grad():
            early = tiny.forward_intermediates(IO["x"], IO["t"], [1, 3], y=IO["y"])
            assert ran == []
            full = tiny.forward_intermediates(IO["x"], IO["t"], [1, 3], y=IO["y"],
                                              stop_early=False)
            assert ran == [1]
    finally:
        handle.remove()
    assert list(early) == ["blocks.0", "blocks.2"]
    for name in early:
        assert torch.equal(early[name], full[name])  # exact: same machine, same kernels


def test_hooks_are_removed_after_an_exception(tiny):
    def boom(*args):
        raise RuntimeError("boom")

    handle = tiny.net.blocks[2].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            tiny.forward_intermediates(IO["x"], IO["t"], "all", y=IO["y"])
    finally:
        handle.remove()
    with pytest.raises(ProbeError, match=r"takes inputs \(B, 4, 8, 8\)"):
        tiny.forward_intermediates(IO["x"][:, :3], IO["t"], "all")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny.modules())


@pytest.mark.numerics
def test_unconditional_dit_is_the_conditional_one_with_a_zero_class_embedding():
    state = torch.load(CKPT)
    zeroed = dict(state, **{"y_embedder.embedding_table.weight":
                            torch.zeros_like(state["y_embedder.embedding_table.weight"])})
    uncond_state = {k: v for k, v in state.items() if not k.startswith("y_embedder")}
    cond = load(zeroed)
    uncond = load(uncond_state, num_classes=0)
    assert uncond.num_classes is None and not hasattr(uncond.net, "y_embedder")
    with torch.no_grad():
        assert_close_net(uncond(IO["x"], IO["t"]), cond(IO["x"], IO["t"], IO["y"]))
    with pytest.raises(ProbeError, match="original format"):
        to_diffusers(uncond)


@pytest.mark.numerics
def test_random_init_pos_embed_is_the_sincos_table():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    model = probe.load_model("dit", random_init=True, **CONFIG)
    side = CONFIG["input_size"] // CONFIG["patch_size"]
    table = get_2d_sincos_pos_embed(CONFIG["hidden_size"], side, base_size=side)
    # sin and cos of float32 angles up to side - 1: off by the angle's rounding
    assert_close_f32(model.net.pos_embed[0], table, scale=side)


def test_user_mistakes_are_one_line_errors(tiny):
    with pytest.raises(ProbeError, match="did you mean hidden_size"):
        probe.load_model("dit", random_init=True, hiden_size=64)
    with pytest.raises(ProbeError, match="does not fit"):
        load(depth=3)
    with pytest.raises(ProbeError, match="class label out of range"):
        tiny(IO["x"], IO["t"], 1001)
    no_null = probe.load_model("dit", random_init=True, **{**CONFIG, "class_dropout_prob": 0})
    assert no_null.null_class is None
    with pytest.raises(ProbeError, match="no null class"):
        no_null(IO["x"], IO["t"])
    with pytest.raises(ProbeError, match="no released weights.*--random-init"):
        probe.load_model("dit-b-2")
    with pytest.raises(ProbeError, match="checkpoint not found"):
        load("no/such/file.pt")


# ---- diffusers ---------------------------------------------------------------------------

@pytest.mark.numerics
def test_diffusers_folder_reproduces_reference(diffusers_folder):
    model = probe.load_model("dit", checkpoint=str(diffusers_folder))
    assert type(model.net).__name__ == "DiffusersDiT"
    assert {k: model.config[k] for k in CONFIG} == CONFIG
    assert model.block_names == [f"blocks.{i}" for i in range(CONFIG["depth"])]
    assert_reproduces_reference(model)


def test_hub_style_diffusers_config_reproduces_reference(diffusers_folder, tmp_path):
    """The hub's DiT configs predate DiTTransformer2DModel and leave norm_eps at diffusers'
    default; the weights must still give the original network."""
    folder = tmp_path / "hub_style"
    folder.mkdir()
    config = json.loads((diffusers_folder / "config.json").read_text())
    config["_class_name"] = "Transformer2DModel"
    del config["norm_eps"]
    (folder / "config.json").write_text(json.dumps(config))
    weights = "diffusion_pytorch_model.safetensors"
    (folder / weights).write_bytes((diffusers_folder / weights).read_bytes())
    assert_reproduces_reference(probe.load_model("dit", checkpoint=str(folder)))


def test_diffusers_folder_must_fit_the_registry_entry(diffusers_folder):
    with pytest.raises(ProbeError, match="does not fit dit-b-2.*hidden_size=64"):
        probe.load_model("dit-b-2", checkpoint=str(diffusers_folder))


def test_hub_id_offline_fails_fast_with_a_one_line_error(offline):
    start = time.monotonic()
    with pytest.raises(ProbeError) as err:
        probe.load_model("dit", checkpoint="facebook/DiT-XL-2-256")
    # diffusers alone would retry for ~30 s before giving up
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and "--checkpoint PATH" in message and "--random-init" in message


def test_unreachable_vae_says_how_to_pass_one(offline):
    with pytest.raises(ProbeError, match=r"VAE .*--vae FOLDER.*--vae random"):
        load(vae="stabilityai/sd-vae-ft-ema")


# ---- the latent pipeline -----------------------------------------------------------------

@pytest.mark.numerics
def test_pipeline_folder_encodes_images_with_its_vae(tmp_path, tiny):
    from diffusers import AutoencoderKL

    pipe = tmp_path / "pipeline"
    to_diffusers(tiny).save_pretrained(pipe / "transformer")
    tiny_vae().save_pretrained(pipe / "vae")

    model = probe.load_model("dit", checkpoint=str(pipe))
    assert (model.image_size, model.image_channels) == (8 * CONFIG["input_size"], 3)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = model.prepare(images)
    assert latents.shape == (2, 4, 8, 8)
    vae = AutoencoderKL.from_pretrained(pipe / "vae")
    with torch.no_grad():
        expected = vae.encode(images * 2 - 1).latent_dist.mean * 0.18215
    assert_close_net(latents, expected)

    # the same VAE given to the original-format checkpoint: the same features
    same = load(vae=str(pipe / "vae"))
    assert_close_net(same.prepare(images), latents)
    noisy = model.q_sample(latents, 100, torch.randn_like(latents))
    with torch.no_grad():
        a = model.forward_intermediates(noisy, 100, "all")
        b = same.forward_intermediates(noisy, 100, "all")
    for name in a:
        assert a[name].shape == (2, 16, CONFIG["hidden_size"])
        assert_close_net(a[name], b[name], what=name)

    assert probe.load_model("dit", checkpoint=str(pipe), vae=None).vae is None


# ---- the registry ------------------------------------------------------------------------

@pytest.mark.parametrize("name", MANIFESTS)
def test_registry_entry_matches_released_checkpoint(name):
    manifest = json.loads((REF / "manifests" / f"{MANIFESTS[name]}.json").read_text())
    with torch.device("meta"):
        model = probe.load_model(name, random_init=True, vae=None)
    shapes = {k: list(v.shape) for k, v in model.net.state_dict().items()}
    assert shapes == manifest["state_dict"]
    for key in ("input_size", "num_classes", "learn_sigma"):
        assert model.config[key] == manifest["config"][key]

    x = torch.zeros(1, *model.input_shape, device="meta")
    feats = model.forward_intermediates(x, 0, "all")
    tokens = (model.config["input_size"] // 2) ** 2
    assert len(feats) == model.config["depth"]
    assert {tuple(f.shape) for f in feats.values()} == {(1, tokens, model.config["hidden_size"])}


def test_registry_entry_with_random_vae_takes_256px_images():
    with torch.device("meta"):
        model = probe.load_model("dit-xl-2", random_init=True, vae="random")
    assert (model.image_size, model.image_channels) == (256, 3)
    assert model.vae.config.latent_channels == 4
