"""The shipped models give the features they gave before the l-DAE was rebuilt from DiT's
pieces and the timestep embeddings became one function: compared with the features saved
then (tests/fixtures/features_before.npz, written by make_features_before.py from the
code as it was)."""
import os

import numpy as np
import pytest
import torch

import probe
from tolerances import assert_close_net

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "features_before.npz")
# One thread, as the fixture was written.  Another CPU (or ATEN_CPU_CAPABILITY) rounds
# differently: the tolerance is NETWORK's, relative to each block's largest value.


@pytest.fixture(scope="module")
def before():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def recompute(model, saved, prefix, check_io):
    images = torch.from_numpy(saved["images"])
    noise = torch.from_numpy(saved[f"{model.name}/noise"])
    t = torch.from_numpy(saved["t"])
    x0 = model.prepare(images.expand(-1, model.image_channels, -1, -1))
    with torch.no_grad():
        x_t = model.q_sample(x0, t, noise)
        blocks = model.forward_intermediates(x_t, t, "all", stop_early=False)
        if check_io:
            assert_close_net(x_t, saved[f"{prefix}/x_t"], what="x_t")
            assert_close_net(model(x_t, t), saved[f"{prefix}/output"], what="output")
    depth = prefix.count("/") + 2
    assert [k for k in saved if k.startswith(prefix + "/") and k.endswith("/index")
            and k.count("/") == depth] == [f"{prefix}/{name}/index" for name in blocks]
    for name, value in blocks.items():
        flat = value.reshape(value.shape[0], -1).numpy()
        assert_close_net(flat[:, saved[f"{prefix}/{name}/index"]], saved[f"{prefix}/{name}"],
                         what=f"{prefix}/{name}")


@pytest.mark.parametrize("name", ["ldae-fmnist", "dae-pixel-fmnist", "dit-fmnist", "adm-fmnist"])
@pytest.mark.numerics
def test_shipped_model_features_are_unchanged(name, before, one_thread):
    recompute(probe.load_model(name), before, name, check_io=True)
    recompute(probe.load_model(name, random_init=True), before, f"{name}/random-init",
              check_io=False)
