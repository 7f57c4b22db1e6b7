"""DINOv2 through timm, the reference REPA aligns SiT to: the token bookkeeping (class and
register tokens are not patches), the block list, and the pooling, at random init (timm
builds it without weights) on 56 px inputs, a 4 x 4 grid of 14 px patches.  The oracle is
timm's own forward_intermediates and forward_features."""
import pytest
import torch

import probe
from probe.pipeline.pooling import apply_pool

GRID = 4  # 56 px / 14 px patches


@pytest.fixture(scope="module", params=[("vit_small_patch14_dinov2", 0),
                                        ("vit_small_patch14_reg4_dinov2", 4)],
                ids=["dinov2", "dinov2-reg4"])
def dino(request):
    arch, registers = request.param
    model = probe.load_model(f"timm:{arch}", random_init=True, img_size=GRID * 14)
    torch.manual_seed(0)
    x = torch.randn(2, 3, GRID * 14, GRID * 14)
    with torch.inference_mode():
        ours = model.forward_intermediates(x, None, "all")
        grids, prefix = zip(*model.net.forward_intermediates(x, return_prefix_tokens=True,
                                                             intermediates_only=True))
        features = model.net.forward_features(x)
    return dict(model=model, registers=registers, ours=ours, grids=grids, prefix=prefix,
                features=features)


def test_tokens_and_blocks(dino):
    model, ours = dino["model"], dino["ours"]
    # the class token and the registers come before the patches
    assert model.num_prefix_tokens == 1 + dino["registers"]
    assert all(p.shape[1] == 1 + dino["registers"] for p in dino["prefix"])
    assert model.block_names == [f"blocks.{i}" for i in range(12)] + ["features", "head"]
    assert ours["blocks.0"].shape == (2, model.num_prefix_tokens + GRID ** 2, 384)
    assert model.input_shape == (3, 56, 56) and model.describe()["num_prefix_tokens"] == \
        model.num_prefix_tokens
    shapes = {n: s for _, n, s in model.block_shapes()}
    assert shapes["blocks.11"] == (model.num_prefix_tokens + GRID ** 2, 384)
    assert shapes["head"] == (384,)


@pytest.mark.parametrize("block", [0, 5, 11])
def test_mean_and_none_are_the_patch_tokens_and_cls_the_class_token(dino, block):
    n, ours = dino["model"].num_prefix_tokens, dino["ours"][f"blocks.{block}"]
    grid, prefix = dino["grids"][block], dino["prefix"][block]
    torch.testing.assert_close(apply_pool(ours, "mean", n), grid.mean((2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_pool(ours, "none", n), grid, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_pool(ours, "cls", n), prefix[:, 0], atol=1e-5, rtol=0)
    # the mean leaves the class and register tokens out: it differs from the mean of all
    assert not torch.allclose(apply_pool(ours, "mean", n), ours.mean(1), atol=1e-4)


def test_features_are_the_normed_tokens_repa_aligns_to(dino):
    """REPA's target is DINOv2's normed patch tokens (forward_features without the class
    and register tokens); their mean is what `--pool mean` stores for `features`."""
    n, ours, features = dino["model"].num_prefix_tokens, dino["ours"], dino["features"]
    torch.testing.assert_close(ours["features"], features, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_pool(ours["features"], "mean", n),
                               features[:, n:].mean(1), atol=1e-5, rtol=0)
    # the pre-logits of a DINOv2 (global_pool 'token') are the normed class token
    torch.testing.assert_close(ours["head"], features[:, 0], atol=1e-5, rtol=0)
