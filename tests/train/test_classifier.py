"""`probe train classifier`: a timm classifier trained with the shared loop, and the shipped
supervised reference sup-fmnist."""
import json
import math
import os

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from probe.cli import main
from probe.data import load_dataset
from probe.errors import ProbeError
from probe.train import loop
from probe.train.classifier import evaluate, train_classifier
from tolerances import approx_f64, assert_close_net

TINY_VIT = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2)


def run(out, **kw):
    # 80 demo images, batch 32: three steps an epoch, the last one short
    kw = dict(dict(image_size=16, limit=80, vit=TINY_VIT, batch_size=32, lr=1e-3, log_every=1,
                   progress=False, device="cpu"), **kw)
    return train_classifier("demo", str(out), **kw)


def timm_model(out):
    """The run's network rebuilt by timm itself from config.json and model.pt."""
    arch = json.load(open(os.path.join(out, "log.json")))["run_config"]["arch"]
    kwargs = json.load(open(os.path.join(out, "config.json")))
    net = timm.create_model(arch, pretrained=False, **kwargs)
    net.load_state_dict(torch.load(os.path.join(out, "model.pt"), weights_only=True))
    return net.eval()


def demo_batch(n, image_size=16, split="train"):
    data = load_dataset("demo", split, image_size, 1)
    x = torch.stack([data[i][0] for i in range(n)])
    return x, torch.as_tensor(data.labels[:n])


def test_the_loss_falls_and_the_checkpoint_is_timms_own(tmp_path):
    log = run(tmp_path, steps=30, lr=3e-3)
    first = log["loss"][0]["loss"]
    assert abs(first - math.log(10)) < 0.3  # an untrained 10-way classifier
    net = timm_model(tmp_path)  # strict load: timm's own layout
    x, y = demo_batch(80)
    with torch.no_grad():
        ce = F.cross_entropy(net((x - 0.5) / 0.5), y).item()
    assert ce < 0.8 * first
    # config.json carries the input pipeline: timm's own data config reads it back
    data_cfg = json.loads(json.dumps(timm.data.resolve_data_config({}, model=net)))
    assert data_cfg == dict(input_size=[1, 16, 16], interpolation="bicubic", mean=[0.5],
                            std=[0.5], crop_pct=1.0, crop_mode="center")
    assert log["run_config"]["model"] == dict(in_chans=1, num_classes=10, img_size=16, **TINY_VIT)
    # the run loads through probe as the command prints: timm:ARCH, the checkpoint, its config
    import probe

    model = probe.load_model("timm:vit_tiny_patch16_224", checkpoint=str(tmp_path / "model.pt"),
                             **json.load(open(tmp_path / "config.json")))
    with torch.no_grad():
        assert_close_net(model(model.prepare(x), None), net((x - 0.5) / 0.5))


def test_resume_equals_an_uninterrupted_run(tmp_path):
    run(tmp_path / "full", epochs=2)
    run(tmp_path / "split", steps=2, save_every=1)  # stopped mid-epoch
    log = run(tmp_path / "split", epochs=2, resume=True)
    assert log["step"] == 6 and len(log["sessions"]) == 2
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("full", "split"))
    # exact: a resumed run on the same machine, same kernels
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (json.load(open(tmp_path / d / "log.json")) for d in ("full", "split"))
    assert [e["loss"] for e in la["loss"]] == [e["loss"] for e in lb["loss"]]
    assert la["seed"] == 0 and la["run_config"]["model"]["embed_dim"] == 32
    with pytest.raises(ProbeError, match="started with lr=0.001"):
        run(tmp_path / "split", epochs=3, resume=True, lr=1e-2)


def test_evaluation_matches_the_networks_own_predictions(tmp_path):
    run(tmp_path, steps=3)
    net = timm_model(tmp_path)
    test = load_dataset("demo", "test", 16, 1)
    images = loop.Images(test, limit=64, progress=False)
    metrics = evaluate(net, images, test.class_names)
    x, y = demo_batch(64, split="test")
    with torch.no_grad():
        pred = net((x - 0.5) / 0.5).argmax(1).numpy()
    assert metrics["top1"] == approx_f64(float(np.mean(pred == y.numpy())))  # k / n
    assert metrics["num_images"] == 64 and np.sum(metrics["confusion_matrix"]) == 64


def test_cli_trains_evaluates_and_refuses_bad_input(tmp_path, capsys):
    out = str(tmp_path / "run")
    tiny = ["--data", "demo", "--image-size", "16", "--limit", "64", "--batch-size", "32",
            "--patch-size", "4", "--hidden-size", "32", "--depth", "1", "--num-heads", "2",
            "--quiet", "--device", "cpu"]
    assert main(["train", "classifier", *tiny, "--steps", "2", "--eval-split", "test",
                 "--out", out]) == 0
    printed = capsys.readouterr().out
    log = json.load(open(os.path.join(out, "log.json")))
    assert log["eval"]["split"] == "test" and log["eval"]["num_images"] == 1000
    assert f"test top-1: {100 * log['eval']['top1']:.2f} %" in printed
    assert sorted(os.listdir(out)) == ["config.json", "log.json", "model.pt", "train_state.pt"]
    assert main(["train", "classifier", *tiny, "--arch", "vit_tiny_patch16_22",
                 "--out", str(tmp_path / "b")]) == 2
    assert "did you mean vit_tiny_patch16_224" in capsys.readouterr().err
    assert main(["train", "classifier", "--arch", "resnet18", "--depth", "3",
                 "--out", str(tmp_path / "c")]) == 2
    assert "resnet18 is not a ViT" in capsys.readouterr().err
    assert main(["train", "classifier", *tiny, "--config", "no_such_arg=1",
                 "--out", str(tmp_path / "d")]) == 2
    assert "timm cannot build vit_tiny_patch16_224" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    assert main(["train", "classifier", *tiny, "--out", out]) == 2  # holds a run
    assert "--resume" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shipped():
    """sup-fmnist rebuilt by timm alone: the registry's architecture, the shipped state dict."""
    from probe.extractors.registry import MODELS, shipped_weights

    spec = MODELS["sup-fmnist"]
    net = timm.create_model(spec["model_name"], pretrained=False, **spec["config"])
    net.load_state_dict(torch.load(shipped_weights(spec["file"]), weights_only=True))
    return net.eval()


@pytest.mark.numerics
def test_sup_fmnist_blocks_and_logits_are_timms_own(shipped):
    import probe

    model = probe.load_model("sup-fmnist")
    assert not model.has_timesteps
    assert model.block_names == [f"blocks.{i}" for i in range(4)] + ["features", "head"]
    x, _ = demo_batch(8, 28, "test")
    feats = model.forward_intermediates(model.prepare(x), None, "all")
    with torch.no_grad():
        ref = shipped.forward_intermediates((x - 0.5) / 0.5, indices=4, intermediates_only=True,
                                            output_fmt="NLC", return_prefix_tokens=True)
        logits = shipped((x - 0.5) / 0.5)
        tokens = shipped.forward_features((x - 0.5) / 0.5)
        pre_logits = shipped.forward_head(tokens, pre_logits=True)
    for i, (patches, prefix) in enumerate(ref):  # probe keeps the class token first
        assert_close_net(feats[f"blocks.{i}"], torch.cat([prefix, patches], 1), what=str(i))
    assert_close_net(feats["features"], tokens, what="features")
    assert_close_net(feats["head"], pre_logits, what="head")
    assert_close_net(model(model.prepare(x), None), logits)


def test_sup_fmnist_classifies_real_test_images(shipped):
    data = load_dataset("demo", "test", 28, 1)
    pick = range(0, len(data), 5)  # 200 of the bundled test images, every class
    x = torch.stack([data[i][0] for i in pick])
    y = data.labels[list(pick)]
    with torch.no_grad():
        pred = shipped((x - 0.5) / 0.5).argmax(1).numpy()
    assert np.mean(pred == y) > 0.7  # chance: 0.1
