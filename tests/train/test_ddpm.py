"""DDPM training of DiT/ADM: the noisy input and the loss against diffusers' scheduler."""
import pytest
import torch
from diffusers import DDPMScheduler

import probe
from probe.errors import ProbeError
from probe.extractors.adm import extractor as adm
from probe.extractors.dit import extractor as dit
from probe.train.ddpm import DDPMObjective
from tolerances import approx_f32, assert_close_f32

SMALL_DIT = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2,
                 num_heads=2, num_classes=0, class_dropout_prob=0.0, learn_sigma=False)
SMALL_ADM = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                 attention_resolutions="4", learn_sigma=False)


def perturbed(model):
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("family, config, channels, schedule", [
    ("dit", SMALL_DIT, 1, dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    ("adm", dict(SMALL_ADM, noise_schedule="cosine"), 3,
     dict(beta_schedule="squaredcos_cap_v2")),
])
@pytest.mark.numerics
def test_noisy_input_and_loss_match_diffusers(family, config, channels, schedule):
    torch.manual_seed(0)
    module = {"dit": dit, "adm": adm}[family]
    model = perturbed(module.create(family, {"config": config}, random_init=True))
    seen = {}
    handle = model.net.register_forward_hook(
        lambda m, args, out: seen.update(x_t=args[0], t=args[1], out=out))
    images = torch.rand(4, channels, 8, 8)
    loss = DDPMObjective(model).loss(images, None, torch.Generator().manual_seed(1))
    handle.remove()
    replay = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (4,), generator=replay)
    noise = torch.randn(images.shape, generator=replay)
    ref = DDPMScheduler(num_train_timesteps=1000, **schedule)
    assert torch.equal(seen["t"].long(), t)
    # diffusers' abar is a float32 product of up to 1000 factors
    assert_close_f32(seen["x_t"], ref.add_noise(images * 2 - 1, noise, t), n=1000)
    assert loss.item() == approx_f32(((seen["out"] - noise) ** 2).mean().item(), n=noise.numel())


def test_only_epsilon_training_is_offered():
    model = dit.create("dit", {"config": dict(SMALL_DIT, learn_sigma=True)}, random_init=True)
    with pytest.raises(ProbeError, match="learn_sigma=False"):
        DDPMObjective(model)
    model = adm.create("adm", {"config": dict(SMALL_ADM, predict_xstart=True)},
                       random_init=True)
    with pytest.raises(ProbeError, match="epsilon prediction"):
        DDPMObjective(model)


def test_export_is_the_family_format(tmp_path):
    torch.manual_seed(0)
    model = perturbed(dit.create("dit", {"config": SMALL_DIT}, random_init=True))
    path = tmp_path / "dit.pt"
    torch.save(DDPMObjective(model, SMALL_DIT).export(), path)
    loaded = probe.load_model("dit", checkpoint=str(path), **SMALL_DIT)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        # exact: same weights, same machine, same kernels
        torch.testing.assert_close(loaded(x, 5), model.eval()(x, 5), rtol=0, atol=0)
