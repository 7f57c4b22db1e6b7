"""The l-DAE family: checkpoints, blocks, schedule, and config errors."""
import math

import pytest
import torch

import probe
from probe.errors import ProbeError
from probe.extractors.ldae import extractor as ldae
from tolerances import assert_close_f32

TINY = dict(image_size=16, in_channels=1, patch_size=4, hidden_size=32, depth=4, num_heads=2,
            latent_dim=5)


def fitted(config=TINY, seed=0):
    """A built l-DAE with a random orthonormal basis and perturbed (non-zero) weights."""
    torch.manual_seed(seed)
    model = ldae.build(config)
    tok = model.net.tokenizer
    if tok is not None:
        D = tok.components.shape[0]
        q, _ = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))
        tok.set_basis(torch.randn(D) * 0.1, q.T.float(), torch.linspace(2, 0.1, D))
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # leave the zero init: blocks do something
    return model


@pytest.fixture
def saved(tmp_path):
    model = fitted()
    path = tmp_path / "ldae.pt"
    torch.save(model.checkpoint({"note": "test"}), path)
    return model, str(path)


def test_checkpoint_rebuilds_the_same_model(saved):
    model, path = saved
    loaded = probe.load_model("ldae", checkpoint=path)
    assert loaded.family == "ldae" and loaded.config == model.config
    assert not any(p.requires_grad for p in loaded.parameters())
    x, t = torch.rand(3, 1, 16, 16) * 2 - 1, torch.tensor([0, 10, 999])
    with torch.no_grad():  # exact: same weights, same machine, same kernels
        torch.testing.assert_close(loaded(x, t), model.eval()(x, t), rtol=0, atol=0)
    noise = torch.randn_like(x)
    assert_close_f32(loaded.q_sample(x, t, noise), model.q_sample(x, t, noise), n=16)
    in_memory = probe.load_model("ldae", checkpoint=model.checkpoint())  # contents, no file
    with torch.no_grad():
        torch.testing.assert_close(in_memory(x, t), loaded(x, t), rtol=0, atol=0)


def test_checkpoint_contents_load_weights_only(saved):
    _, path = saved
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == "probe-ldae" and obj["meta"] == {"note": "test"}
    assert "tokenizer.components" in obj["model"] and "pos_embed" not in obj["model"]


def test_blocks_encoder_split_and_early_exit_equal_a_full_pass(saved):
    _, path = saved
    model = probe.load_model("ldae", checkpoint=path)
    assert model.block_names == [f"blocks.{i}" for i in range(4)]
    assert model.encoder_blocks == ["blocks.0", "blocks.1"]
    assert model.decoder_blocks == ["blocks.2", "blocks.3"]
    assert model.encoder_output == "blocks.1" and model.resolve_blocks(2) == ["blocks.1"]
    x = model.prepare(torch.rand(2, 1, 16, 16))
    early = model.forward_intermediates(x, 10, ["blocks.0", "blocks.1"], stop_early=True)
    full = model.forward_intermediates(x, 10, "all", stop_early=False)
    for name in early:
        assert torch.equal(early[name], full[name])  # exact: same machine, same kernels
    assert full["blocks.1"].shape == (2, 16, 32)
    assert model.to_map(full["blocks.1"]).shape == (2, 32, 4, 4)
    # The paper's probe features: clean input at a small t, mean-pooled encoder output.
    feats = model.encode(torch.rand(2, 1, 16, 16), t=10)
    assert feats.shape == (2, 32)


def test_encoder_split_is_configurable():
    model = ldae.build(dict(TINY, depth=5, encoder_depth=4))
    assert model.encoder_blocks == [f"blocks.{i}" for i in range(4)]
    assert model.decoder_blocks == ["blocks.4"]


def np_patches(x, p):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(
        n, -1, c * p * p)


def np_image(tokens, p, shape):
    n, c, h, w = shape
    return tokens.reshape(n, h // p, w // p, c, p, p).transpose(0, 3, 1, 4, 2, 5).reshape(shape)


@pytest.mark.numerics
def test_q_sample_is_latent_noise_projected_back_to_pixels():
    model = fitted()
    tok = model.net.tokenizer
    mean, V = tok.mean.double().numpy(), tok.components.double().numpy()[:5]
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 500, 999])
    got = model.q_sample(x0, t, noise).double().numpy()
    sigma = math.sqrt(2) * t.double().numpy() / 999
    z = (np_patches(x0.double().numpy(), 4) - mean) @ V.T
    e = np_patches(noise.double().numpy(), 4) @ V.T
    want = np_image(mean + (z + sigma[:, None, None] * e) @ V, 4, x0.shape)
    assert_close_f32(got, want, n=16)  # float32 projections on 16-value patches
    # prepare(): the clean image as the tokenizer keeps it, i.e. q_sample at sigma = 0.
    images = (x0 + 1) / 2
    assert_close_f32(model.prepare(images), np_image(mean + z @ V, 4, x0.shape), n=16)


@pytest.mark.numerics
def test_schedules_describe_and_check_t():
    model = ldae.build(dict(TINY, latent_dim=None, noise_space="pixel",
                            schedule="gamma2-linear", num_timesteps=11))
    x0, noise = torch.ones(2, 1, 16, 16), torch.ones(2, 1, 16, 16)
    out = model.q_sample(x0, torch.tensor([0, 5]), noise)
    assert_close_f32(out[0], x0[0], n=2)  # gamma^2 = 1 at t = 0
    g, s = math.sqrt(0.5), math.sqrt(0.5)     # gamma^2 = 1 - 5/10
    assert_close_f32(out[1], torch.full_like(x0[1], g + s), n=2)
    assert model.schedule.describe()["kind"] == "gamma2-linear"
    with pytest.raises(ProbeError, match="outside the schedule"):
        model.q_sample(x0, 11, noise)


def test_model_moves_with_its_tokenizer():
    model = fitted()
    model.to(torch.float64)
    assert model.schedule.tokenizer.components.dtype == torch.float64
    x0 = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    assert model.q_sample(x0, 3, torch.randn_like(x0)).dtype == torch.float64


def test_random_init_and_family_errors(tmp_path):
    model = probe.load_model("ldae", random_init=True, **TINY)
    assert model.source == "random init" and model.config["latent_dim"] == 5
    with pytest.raises(ProbeError, match="no released weights"):
        probe.load_model("ldae")
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ProbeError, match="not an l-DAE checkpoint"):
        probe.load_model("ldae", checkpoint=str(other))
    path = tmp_path / "m.pt"
    torch.save(ldae.build(TINY).checkpoint(), path)
    with pytest.raises(ProbeError, match="trained with depth=4, not 6"):
        probe.load_model("ldae", checkpoint=str(path), depth=6)
    state = ldae.build(TINY).checkpoint()
    del state["model"]["blocks.0.attn.qkv.weight"]
    torch.save(state, path)
    with pytest.raises(ProbeError, match="missing keys"):
        probe.load_model("ldae", checkpoint=str(path))


@pytest.mark.parametrize("change, message", [
    (dict(latent_dim=17), "d=17 must be between 1 and the patch dimension"),
    (dict(latent_dim=0), "must be between 1"),
    (dict(depth=5), "depth 5 cannot be split"),
    (dict(encoder_depth=4), "encoder depth 4 does not split 4 blocks"),
    (dict(image_size=18), "image size 18 is not divisible by patch size 4"),
    (dict(num_heads=3), "not divisible by 3 heads"),
    (dict(noise_space="vq"), "noise_space must be one of latent, pixel"),
    (dict(schedule="cosine"), "schedule must be one of"),
    (dict(target="v"), "target must be one of clean, noise"),
    (dict(single_t=1000), "single_t 1000 is outside the schedule"),
    (dict(noise_space="pixel"), "latent_dim .* only applies"),
    (dict(sigma_max=0), "sigma_max must be positive"),
    (dict(depthh=4), "unknown ldae option 'depthh' \\(did you mean depth"),
    (dict(patch_size=0), "patch_size must be a positive integer"),
])
def test_bad_configs_are_one_line_errors(change, message):
    with pytest.raises(ProbeError, match=message) as err:
        ldae.validate_config(dict(TINY, **change))
    assert "\n" not in str(err.value)


def test_random_init_of_a_shipped_ldae_keeps_its_architecture_and_tokenizer():
    trained = probe.load_model("ldae-fmnist")
    fresh = probe.load_model("ldae-fmnist", random_init=True)
    again = probe.load_model("ldae-fmnist", random_init=True)
    assert fresh.net.config == trained.net.config
    tok_t, tok_f = trained.net.tokenizer, fresh.net.tokenizer
    for buf in ("mean", "components", "variance"):
        assert torch.equal(getattr(tok_t, buf), getattr(tok_f, buf))  # a copy
    # The fitted basis, not the identity placeholder of an unfitted tokenizer.
    assert not torch.equal(tok_f.components, torch.eye(tok_f.components.shape[0]))
    w_t, w_f = trained.net.blocks[0].attn.qkv.weight, fresh.net.blocks[0].attn.qkv.weight
    assert not torch.allclose(w_t, w_f)
    assert torch.equal(w_f, again.net.blocks[0].attn.qkv.weight)  # seeded: same draws


# ---- checkpoint versions -------------------------------------------------------------------
# Version 1 (the shipped files; `probe train ldae` before the l-DAE ran on DiT's modules)
# named the timestep MLP as diffusers' TimestepEmbedding does.
V1_NAMES = {"t_embedder.mlp.0.": "t_embedder.linear_1.",
            "t_embedder.mlp.2.": "t_embedder.linear_2."}


def as_version_1(state, prefix=""):
    out = {}
    for key, value in state.items():
        for new, old in V1_NAMES.items():
            if key.startswith(prefix + new):
                key = prefix + old + key[len(prefix + new):]
        out[key] = value
    return out


def test_new_checkpoints_are_version_3_in_dits_layout(saved):
    _, path = saved
    obj = torch.load(path, weights_only=True)
    assert obj["version"] == 3
    assert obj["config"]["tokenizer"] == "pca" and obj["config"]["net_input"] == "projected"
    assert {"t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias"} <= obj["model"].keys()
    assert not any("linear_1" in k or "t_proj" in k for k in obj["model"])


def test_shipped_weights_are_version_1_and_load(saved):
    from probe.extractors.registry import shipped_weights

    obj = torch.load(shipped_weights("ldae-fmnist.pt"), weights_only=True)
    assert obj["version"] == 1 and "t_embedder.linear_1.weight" in obj["model"]
    model = probe.load_model("ldae-fmnist")
    assert torch.equal(model.net.t_embedder.mlp[0].weight,  # a copy
                       obj["model"]["t_embedder.linear_1.weight"])


def test_version_1_checkpoints_and_training_states_load(saved, tmp_path):
    model, path = saved
    obj = torch.load(path, weights_only=True)
    old = dict(obj, version=1, model=as_version_1(obj["model"]))
    torch.save(old, tmp_path / "v1.pt")
    loaded = probe.load_model("ldae", checkpoint=str(tmp_path / "v1.pt"))
    x, t = torch.rand(2, 1, 16, 16) * 2 - 1, torch.tensor([3, 700])
    with torch.no_grad():  # exact: same weights, same machine, same kernels
        torch.testing.assert_close(loaded(x, t), model.eval()(x, t), rtol=0, atol=0)
    # A run's train_state.pt holds the Extractor's own state dict (keys under "net."),
    # which `probe train --resume` loads directly.
    fresh = ldae.build(TINY)
    fresh.load_state_dict(as_version_1(model.state_dict(), prefix="net."))
    with torch.no_grad():  # exact: same weights, same machine, same kernels
        torch.testing.assert_close(fresh.eval()(x, t), model(x, t), rtol=0, atol=0)


def test_version_2_checkpoints_load_as_pca_and_the_final_recipe(saved, tmp_path):
    """Version 2 configs predate the tokenizer keys: they were PCA, pixel input and output."""
    model, path = saved
    obj = torch.load(path, weights_only=True)
    new_keys = ("tokenizer", "tokenizer_width", "net_input", "net_output")
    config = {k: v for k, v in obj["config"].items() if k not in new_keys}
    torch.save(dict(obj, version=2, config=config), tmp_path / "v2.pt")
    loaded = probe.load_model("ldae", checkpoint=str(tmp_path / "v2.pt"))
    assert loaded.config == model.config
    images = torch.rand(2, 1, 16, 16)  # exact: same weights, same machine, same kernels
    torch.testing.assert_close(loaded.prepare(images), model.prepare(images), rtol=0, atol=0)


def test_checkpoints_of_a_newer_probe_are_refused(saved, tmp_path):
    _, path = saved
    torch.save(dict(torch.load(path, weights_only=True), version=4), tmp_path / "v4.pt")
    with pytest.raises(ProbeError, match="newer probe .* upgrade probe"):
        probe.load_model("ldae", checkpoint=str(tmp_path / "v4.pt"))
