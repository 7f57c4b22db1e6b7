"""The l-DAE objective against the paper's formulas, computed independently in numpy."""
import math

import numpy as np
import pytest
import torch

from probe.data import load_dataset
from probe.train.ldae import LDAEObjective, build
from probe.train.loop import Images, prepare_out, train
from tolerances import approx_f32, assert_close_f32

TINY = dict(image_size=16, in_channels=1, patch_size=4, hidden_size=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def demo16():
    return Images(load_dataset("demo", "train", 16, 1), limit=512, progress=False)


def np_patches(x, p):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(
        n, (h // p) * (w // p), c * p * p)


def np_image(tokens, p, shape):
    n, c, h, w = shape
    return tokens.reshape(n, h // p, w // p, c, p, p).transpose(0, 3, 1, 4, 2, 5).reshape(shape)


def capture_net(model):
    seen = {}

    def hook(module, args, output):
        seen["x_t"], seen["t"], seen["out"] = args[0].detach(), args[1].detach(), output.detach()

    return seen, model.net.register_forward_hook(hook)


def reference_loss(seen, x0, noise, mean, U, d, cfg, T):
    """The paper's loss from its description: sigma linear 0..sigma_max (or the gamma^2
    schedule), input mean + V^T(gamma V(x-mean) + sigma V eps), residual weighted 1 / w."""
    t = seen["t"].numpy().astype(np.float64)
    frac = t / (T - 1)
    if cfg.get("schedule", "sigma-linear") == "sigma-linear":
        gamma, sigma = np.ones_like(frac), cfg.get("sigma_max", math.sqrt(2)) * frac
    else:
        gamma, sigma = np.sqrt(1 - frac), np.sqrt(frac)
    p = cfg["patch_size"]
    Vd = U[:d]
    z = (np_patches(x0, p) - mean) @ Vd.T
    e = np_patches(noise, p) @ Vd.T
    x_t = np_image(mean + (gamma[:, None, None] * z + sigma[:, None, None] * e) @ Vd, p, x0.shape)
    target = x0 if cfg.get("target", "clean") == "clean" else np_image(e @ Vd, p, x0.shape)
    r = np_patches(seen["out"].double().numpy() - target, p) @ U.T
    w = np.where(np.arange(U.shape[0]) < d, 1.0, cfg.get("residual_weight", 0.1))
    per_image = (r ** 2 * w).mean(axis=(1, 2)) / (1 + sigma ** 2)
    return x_t, per_image.mean()


@pytest.mark.parametrize("cfg", [
    dict(TINY, latent_dim=4),
    dict(TINY, latent_dim=6, schedule="gamma2-linear", target="noise", residual_weight=0.3),
    dict(TINY, latent_dim=16, sigma_max=3.0),
])
@pytest.mark.numerics
def test_network_input_and_loss_follow_the_formulas(demo16, cfg):
    torch.manual_seed(0)
    model = build(cfg, demo16, pca_patches=3000, seed=0)
    # Make the output non-trivial (the zero-initialised head would predict 0).
    torch.nn.init.normal_(model.net.final_layer.linear.weight, std=0.1)
    objective = LDAEObjective(model)
    images = demo16[torch.arange(8)]
    gen = torch.Generator().manual_seed(5)
    seen, handle = capture_net(model)
    loss = objective.loss(images, None, gen)
    handle.remove()
    # The same draws, replayed: timesteps first, then the pixel-shaped noise.
    replay = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (8,), generator=replay)
    noise = torch.randn(images.shape, generator=replay).double().numpy()
    assert torch.equal(seen["t"], t)  # integers
    tok = model.net.tokenizer
    x0 = images.double().numpy() * 2 - 1
    x_t, ref = reference_loss(seen, x0, noise, tok.mean.double().numpy(),
                              tok.components.double().numpy(), tok.d, cfg, 1000)
    # float32 projections on patches of D values, then a float32 mean over every pixel
    assert_close_f32(seen["x_t"], x_t, n=tok.components.shape[0])
    assert loss.item() == approx_f32(ref, n=images.numel())


@pytest.mark.numerics
def test_pixel_noise_is_the_classical_dae(demo16):
    torch.manual_seed(0)
    model = build(dict(TINY, noise_space="pixel"), demo16)
    assert model.net.tokenizer is None
    torch.nn.init.normal_(model.net.final_layer.linear.weight, std=0.1)
    images = demo16[torch.arange(8)]
    seen, handle = capture_net(model)
    loss = LDAEObjective(model).loss(images, None, torch.Generator().manual_seed(2))
    handle.remove()
    replay = torch.Generator().manual_seed(2)
    t = torch.randint(0, 1000, (8,), generator=replay).double().numpy()
    noise = torch.randn(images.shape, generator=replay).double().numpy()
    sigma = math.sqrt(2) * t / 999
    x0 = images.double().numpy() * 2 - 1
    assert_close_f32(seen["x_t"], x0 + sigma[:, None, None, None] * noise, n=2)
    err = ((seen["out"].double().numpy() - x0) ** 2).mean(axis=(1, 2, 3))
    assert loss.item() == approx_f32((err / (1 + sigma ** 2)).mean(), n=images.numel())


def test_single_noise_level_trains_at_one_timestep(demo16):
    model = build(dict(TINY, latent_dim=4, single_t=250), demo16, pca_patches=1000)
    seen, handle = capture_net(model)
    LDAEObjective(model).loss(demo16[torch.arange(4)], None, torch.Generator())
    handle.remove()
    assert seen["t"].tolist() == [250] * 4


def test_loss_decreases_on_real_data(demo16, tmp_path):
    torch.manual_seed(0)
    model = build(dict(TINY, latent_dim=4), demo16, pca_patches=3000)
    log = train(LDAEObjective(model), demo16, str(tmp_path), steps=48, batch_size=32, lr=1e-3,
                log_every=8, state=prepare_out(str(tmp_path), False, False), progress=False)
    curve = [e["loss"] for e in log["loss"]]
    assert len(curve) == 6
    assert curve[-1] < 0.5 * curve[0]
    assert curve[-1] < curve[-2] * 1.2  # still learning, not diverging
