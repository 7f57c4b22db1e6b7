"""The shipped models are the trained ones, wired right: on real test images each denoises
far better than the same architecture at random init, by its own training objective."""
import pytest
import torch

import probe
from probe.data import load_dataset
from probe.demo import shipped_models

T = 100


@pytest.fixture(scope="module")
def images():
    data = load_dataset("demo", "test", 28, 1)
    return torch.stack([data[i][0] for i in range(0, len(data), 20)])  # 50 images, all classes


def test_every_registered_weights_file_is_shipped():
    assert {"ldae-fmnist", "dae-pixel-fmnist", "dit-fmnist", "adm-fmnist"} <= set(shipped_models())


@pytest.mark.parametrize("name", ["ldae-fmnist", "dae-pixel-fmnist", "dit-fmnist", "adm-fmnist"])
def test_trained_weights_denoise_real_images(name, images):
    losses = {}
    for trained in (True, False):
        model = probe.load_model(name, random_init=not trained)
        x = images.expand(-1, model.image_channels, -1, -1)
        x0 = model.prepare(x)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            out = model(model.q_sample(x0, T, noise), T)
        # DDPM families predict the noise; the l-DAEs predict the clean image
        target = x0 if model.family == "ldae" else noise
        losses[trained] = torch.mean((out[:, :target.shape[1]] - target) ** 2).item()
    assert losses[True] < 0.5 * losses[False], losses
