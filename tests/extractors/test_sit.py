"""SiT and REPA (family sit): checked against the outputs of the original code (willisma/SiT
@947f95b models.py, sihyun-yu/REPA @67f7145 models/sit.py, run at toy size with N(0, 0.05)
weights by tests/fixtures/reference/make_sit_fixtures.py), the released checkpoints'
key/shape manifests (built from the same code on the meta device), and the interpolant
written out by hand from the repositories' path definitions."""
import argparse
import json
from pathlib import Path

import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.extractors.sit.schedule import InterpolantSchedule
from probe.store import open_features
from probe.train.flow import FlowObjective

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
REPA_FLAGS = dict(learn_sigma=False, convention="repa")  # REPA's SiT has no sigma channels


def reference(kind, name):
    config = json.loads((REF / kind / f"{name}.json").read_text())
    return config, torch.load(REF / kind / f"{name}.io.pt"), str(REF / kind / f"{name}.pt")


def load(kind, name, checkpoint=None, **kw):
    config, _, path = reference(kind, name)
    extra = REPA_FLAGS if kind == "repa" else {}
    return probe.load_model("sit", checkpoint=checkpoint or path, **{**config, **extra, **kw})


def assert_reproduces(model, io):
    with torch.no_grad():
        out = model(io["x"], io["t"], io["y"])
        feats = model.forward_intermediates(io["x"], io["t"], "all", y=io["y"], stop_early=False)
    # Same float32 operations in the same order as the original; different CPUs (AVX2 vs
    # AVX-512) may round the matmuls differently, by a few ulps of values of size ~1:
    # 1e-5 of the largest magnitude is far above that and far below any real mismatch.
    tol = 1e-5 * float(io["out"].abs().max())
    torch.testing.assert_close(out, io["out"], atol=tol, rtol=0)
    assert list(feats) == list(io["features"])  # forward order, projectors included
    for name, ref in io["features"].items():
        torch.testing.assert_close(feats[name], ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_sit_reproduces_the_original_models_py():
    model = load("sit", "sit_tiny")
    _, io, _ = reference("sit", "sit_tiny")
    assert model.block_names == ["blocks.0", "blocks.1", "blocks.2"]
    assert (model.num_classes, model.null_class) == (10, 10)  # io["y"] holds the null class
    assert model.schedule.describe()["convention"] == "sit"
    assert_reproduces(model, io)


@pytest.mark.parametrize("name", ["repa_tiny", "repa_tiny_qknorm"])
def test_repa_blocks_and_projectors_reproduce_the_original(name):
    model = load("repa", name)
    config, io, _ = reference("repa", name)
    depth = config["encoder_depth"]
    # the projectors come right after block encoder_depth, in forward order
    assert model.block_names[depth: depth + len(config["z_dims"])] == [
        f"projectors.{j}" for j in range(len(config["z_dims"]))]
    assert_reproduces(model, io)


def test_train_py_checkpoints_load_their_ema_weights(tmp_path):
    config, io, path = reference("repa", "repa_tiny")
    ema = torch.load(path)
    raw = {k: v + 1.0 for k, v in ema.items()}  # the non-EMA weights: must not be picked
    ckpt = tmp_path / "0400000.pt"
    torch.save({"model": raw, "ema": ema, "opt": {}, "steps": 400000,
                "args": argparse.Namespace(encoder_depth=config["encoder_depth"])}, ckpt)
    with pytest.raises(ProbeError, match="--trust-checkpoint"):  # args is a pickled object
        load("repa", "repa_tiny", checkpoint=str(ckpt))
    assert_reproduces(load("repa", "repa_tiny", checkpoint=str(ckpt), trust_checkpoint=True), io)
    with pytest.raises(ProbeError, match=r"args\.encoder_depth=2, not encoder_depth=3"):
        load("repa", "repa_tiny", checkpoint=str(ckpt), trust_checkpoint=True, encoder_depth=3)


def test_legacy_decoder_blocks_naming_loads():
    # make_sit_fixtures.py checked that REPA's own load_legacy_checkpoints maps this file
    # back to repa_tiny.pt
    legacy = str(REF / "repa" / "repa_tiny_legacy.pt")
    assert any(k.startswith("decoder_blocks.") for k in torch.load(legacy))
    _, io, _ = reference("repa", "repa_tiny")
    assert_reproduces(load("repa", "repa_tiny", checkpoint=legacy), io)


@pytest.mark.parametrize("depth", [1, 3])
def test_legacy_checkpoint_with_another_encoder_depth_names_the_key(depth):
    legacy = str(REF / "repa" / "repa_tiny_legacy.pt")
    with pytest.raises(ProbeError) as e:
        load("repa", "repa_tiny", checkpoint=legacy, encoder_depth=depth)
    msg = str(e.value)
    assert "\n" not in msg
    assert "decoder_blocks.0." in msg and f"encoder_depth={depth}" in msg
    assert "use encoder_depth=2" in msg


@pytest.mark.parametrize("name, manifest", [("sit-xl-2", "SiT-XL-2-256x256"),
                                            ("repa-sit-xl-2", "REPA-SiT-XL-2-256x256")])
def test_zoo_architectures_match_the_released_checkpoints(name, manifest):
    want = json.loads((REF / "manifests" / f"{manifest}.json").read_text())
    model = probe.extractors.registry.load_architecture(name)  # meta device: no download
    assert {k: list(v.shape) for k, v in model.net.state_dict().items()} == want["state_dict"]
    assert model.schedule.describe()["convention"] == ("repa" if "repa" in name else "sit")


def test_zoo_has_every_size_and_patch():
    from probe.extractors.registry import MODELS

    for size in ("s", "b", "l", "xl"):
        for patch in (2, 4, 8):
            assert MODELS[f"sit-{size}-{patch}"]["config"]["patch_size"] == patch
    assert MODELS["repa-sit-b-2"]["config"]["encoder_depth"] == 4  # the paper's choice for B


@pytest.mark.parametrize("convention, t, alpha, sigma", [("sit", 0.25, 0.25, 0.75),
                                                         ("repa", 0.25, 0.75, 0.25)])
def test_interpolant_in_each_repositorys_direction(convention, t, alpha, sigma):
    # SiT transport/path.py ICPlan: alpha_t = t, sigma_t = 1 - t (x1 the data);
    # REPA loss.py interpolant: alpha_t = 1 - t, sigma_t = t
    s = InterpolantSchedule(convention)
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(s.q_sample(x, torch.tensor([t, t]), eps), alpha * x + sigma * eps)
    assert s.log_snr(t).item() == pytest.approx(2 * torch.log(torch.tensor(alpha / sigma)).item())
    level = s.noise_level(t)
    assert (level["alpha"], level["sigma"]) == pytest.approx((alpha, sigma))
    assert s.t_of_log_snr(level["logsnr"]) == pytest.approx(t)
    d_alpha, d_sigma = (1, -1) if convention == "sit" else (-1, 1)
    torch.testing.assert_close(s.velocity(x, eps), d_alpha * x + d_sigma * eps)


@pytest.mark.parametrize("t, match", [(100, "looks like a DDPM step"), (2, "DDPM step"),
                                      (1.5, "outside"), (-0.1, "outside")])
def test_t_outside_0_1_is_refused_with_the_convention(t, match):
    model = load("sit", "sit_tiny")
    with pytest.raises(ProbeError, match=match) as e:
        model(torch.zeros(1, 4, 8, 8), t)
    assert "t=1 clean" in str(e.value) and "\n" not in str(e.value)


def test_flow_objective_is_sits_velocity_loss():
    model = probe.load_model("sit", random_init=True, input_size=8, patch_size=4, in_channels=1,
                             hidden_size=16, depth=1, num_heads=2, num_classes=0,
                             learn_sigma=False).train().requires_grad_(True)
    seen = {}
    model.net.register_forward_hook(lambda m, args, out: seen.update(x_t=args[0], t=args[1],
                                                                     out=out))
    images = torch.rand(4, 1, 8, 8)
    loss = FlowObjective(model).loss(images, None, torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)
    t, eps = torch.rand(4, generator=replay), torch.randn(4, 1, 8, 8, generator=replay)
    x = images * 2 - 1
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], tt * x + (1 - tt) * eps)  # t = 1 is the data
    assert loss.item() == pytest.approx(((seen["out"] - (x - eps)) ** 2).mean().item(), rel=1e-5)


def test_trained_sit_fmnist_predicts_the_velocity_of_real_images():
    from probe.data import load_dataset

    data = load_dataset("demo", "test", 28, 1)
    images = torch.stack([data[i][0] for i in range(0, len(data), 20)])
    losses = {}
    for trained in (True, False):
        model = probe.load_model("sit-fmnist", random_init=not trained)
        x0 = model.prepare(images)
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            out = model(model.q_sample(x0, 0.5, eps), 0.5)
        losses[trained] = torch.mean((out - (x0 - eps)) ** 2).item()
    assert losses[True] < 0.5 * losses[False], losses


def test_extract_sit_fmnist_at_a_float_t_end_to_end(tmp_path, capsys):
    out = tmp_path / "sit.h5"
    assert main(["extract", "--model", "sit-fmnist", "--t", "0.5,0.1", "--blocks", "2",
                 "--data", "demo", "--limit", "6", "--out", str(out), "--quiet"]) == 0
    with open_features(out) as f:
        assert f.keys == [(0.1, "blocks.1"), (0.5, "blocks.1")]
        assert f.select(keys="t0.5/2") == [(0.5, "blocks.1")]
        assert f.attrs["schedule"]["convention"] == "sit"
        a, b = f.load((0.1, "blocks.1")), f.load("t0.5/blocks.1")
        assert a.shape == (6, 128) and not torch.allclose(torch.as_tensor(a), torch.as_tensor(b))
    assert main(["extract", "--model", "sit-fmnist", "--t", "100", "--data", "demo", "--limit",
                 "2", "--out", str(tmp_path / "bad.h5"), "--quiet"]) == 2
    assert "looks like a DDPM step" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()


def test_released_weights_fail_offline_in_one_line(monkeypatch):
    def no_network(url, **kw):
        assert "dropbox" in url and kw["file_name"] == "SiT-XL-2-256x256.pt"
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ProbeError, match="could not fetch weights .* --checkpoint PATH") as e:
        probe.load_model("sit-xl-2")
    assert "\n" not in str(e.value)
