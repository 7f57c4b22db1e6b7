import h5py
import numpy as np
import pytest
import torch

from probe.errors import ProbeError
from probe.pipeline.noise import per_sample_noise
from probe.pipeline.pooling import apply_pool, parse_pool
from probe.store import open_features, parse_key, write_features
from tolerances import assert_close_f32


def test_noise_depends_only_on_seed_id_t_draw():
    a = per_sample_noise((3, 4), 0, ["x", "y", "z"], 10)
    b = per_sample_noise((3, 4), 0, ["z", "x"], 10)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])  # exact: same draws, same machine
    for other in (per_sample_noise((3, 4), 1, ["x"], 10), per_sample_noise((3, 4), 0, ["x"], 11),
                  per_sample_noise((3, 4), 0, ["x"], 10, draw=1)):
        assert not torch.equal(a[0], other[0])
    # continuous t: each t its own noise (0.1 and 0.5 are not both "0")
    assert not torch.equal(per_sample_noise((3,), 0, ["x"], 0.1), per_sample_noise((3,), 0, ["x"], 0.5))
    # integer steps hash exactly as they always have, so earlier files keep their noise
    import hashlib

    from probe.pipeline.noise import sample_seed
    digest = hashlib.blake2b(b"7|x|10|1", digest_size=8).digest()
    assert sample_seed(7, "x", 10, 1) == int.from_bytes(digest, "little") >> 1
    big = per_sample_noise((4, 32, 32), 0, [str(i) for i in range(64)], 100)
    assert abs(big.mean().item()) < 0.02 and abs(big.std().item() - 1) < 0.02


@pytest.mark.numerics
def test_tokens_lie_on_their_grid_and_pooling_matches_numpy():
    # DiT patchifies row-major: token k is the patch at row k // w, column k % w
    tokens = torch.zeros(1, 16, 3)
    tokens[0, 3, 0] = 1.0    # top-right patch of a 4x4 grid
    tokens[0, 13, 1] = 2.0   # bottom row, second column
    fmap = apply_pool(tokens, "none")
    assert fmap.shape == (1, 3, 4, 4)
    assert fmap[0, 0, 0, 3] == 1.0 and fmap[0, 1, 3, 1] == 2.0 and fmap.abs().sum() == 3.0
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    grid = x.numpy().reshape(2, 4, 4, 8)                       # (B, row, col, D)
    top = np.abs(grid).max()  # means of 16 and of 4 values, at the scale of the values
    assert_close_f32(apply_pool(x, "mean"), grid.mean(axis=(1, 2)), n=16, scale=top)
    quads = grid.reshape(2, 2, 2, 2, 2, 8).mean(axis=(2, 4))   # 2x2 blocks of 2x2 patches
    assert_close_f32(apply_pool(x, "avg2"), quads.transpose(0, 3, 1, 2), n=4, scale=top)
    with pytest.raises(ProbeError, match="larger than a 4x4 block map"):
        apply_pool(x, "avg5")
    for bad in ("max", "avg0", "avg", "mean2"):
        with pytest.raises(ProbeError, match="bad --pool"):
            parse_pool(bad)


@pytest.mark.numerics
def test_store_roundtrip_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    feats = {(10, "b.0"): rng.normal(size=(6, 3)), (10, "b.1"): rng.normal(size=(6, 2, 2, 2))}
    path = write_features(str(tmp_path / "f.h5"), feats, labels=[0, 1, 0, 1, 2, 2],
                          ids=list("abcdef"), attrs={"pool": "none"})
    with open_features(path) as f:
        assert f.keys == [(10, "b.0"), (10, "b.1")] and f.is_spatial((10, "b.1"))
        # exact: a float64 -> float32 cast rounds the same (IEEE 754) on every machine
        np.testing.assert_array_equal(f.load("t10/b.0"), feats[(10, "b.0")].astype(np.float32))
        assert f.ids == list("abcdef") and f.attrs["pool"] == "none"
        with pytest.raises(ProbeError, match="no features at t=20"):
            f.load((20, "b.0"))
    with h5py.File(path, "r+") as h:
        h.attrs["complete"] = False
    with pytest.raises(ProbeError, match="incomplete"):
        open_features(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h:
        h["x"] = np.zeros(3)
    with pytest.raises(ProbeError, match="not a probe feature file"):
        open_features(str(other))
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(open(path, "rb").read()[:500])
    with pytest.raises(ProbeError, match="truncated or corrupt"):
        open_features(str(trunc))
    with pytest.raises(ProbeError, match="bad feature key"):
        parse_key("100/b.0")


def test_dit_tokens_map_to_where_their_patch_is_in_the_image():
    import probe

    model = probe.load_model("dit-fmnist")  # 28 px, patch 7: a 4x4 grid
    blank = torch.zeros(1, 1, 28, 28)
    marked = blank.clone()
    marked[..., 0:7, 21:28] = 1.0                 # the top-right patch of the image
    with torch.no_grad():
        a = model.net.x_embedder(model.prepare(blank))
        b = model.net.x_embedder(model.prepare(marked))
    changed = (apply_pool(b, "none") - apply_pool(a, "none")).abs().sum(dim=1)[0]  # (4, 4)
    assert changed[0, 3] > 0 and changed.count_nonzero() == 1
