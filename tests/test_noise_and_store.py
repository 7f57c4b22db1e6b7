import h5py
import numpy as np
import pytest
import torch

from probe.errors import ProbeError
from probe.noise import per_sample_noise
from probe.pooling import apply_pool, parse_pool, pooled_shape
from probe.store import open_features, parse_key, write_features


def test_noise_depends_only_on_seed_id_t_draw():
    a = per_sample_noise((3, 4), 0, ["x", "y", "z"], 10)
    b = per_sample_noise((3, 4), 0, ["z", "x"], 10)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    for other in (per_sample_noise((3, 4), 1, ["x"], 10), per_sample_noise((3, 4), 0, ["x"], 11),
                  per_sample_noise((3, 4), 0, ["x"], 10, draw=1)):
        assert not torch.equal(a[0], other[0])
    big = per_sample_noise((4, 32, 32), 0, [str(i) for i in range(64)], 100)
    assert abs(big.mean().item()) < 0.02 and abs(big.std().item() - 1) < 0.02


def test_pooling_shapes_and_tokens():
    tokens = torch.randn(2, 16, 8)  # (B, N, D) on a 4x4 grid
    fmap = tokens.transpose(1, 2).reshape(2, 8, 4, 4)
    assert torch.allclose(apply_pool(tokens, "mean"), tokens.mean(1))
    assert torch.equal(apply_pool(tokens, "none"), fmap)
    assert apply_pool(tokens, "avg2").shape == (2, 8, 2, 2) == (2, *pooled_shape((8, 4, 4), "avg2"))
    for bad in ("max", "avg0", "avg", "mean2"):
        with pytest.raises(ProbeError, match="bad --pool"):
            parse_pool(bad)


def test_store_roundtrip_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    feats = {(10, "b.0"): rng.normal(size=(6, 3)), (10, "b.1"): rng.normal(size=(6, 2, 2, 2))}
    path = write_features(str(tmp_path / "f.h5"), feats, labels=[0, 1, 0, 1, 2, 2],
                          ids=list("abcdef"), attrs={"pool": "none"})
    with open_features(path) as f:
        assert f.keys == [(10, "b.0"), (10, "b.1")] and f.is_spatial((10, "b.1"))
        np.testing.assert_allclose(f.load("t10/b.0"), feats[(10, "b.0")].astype(np.float32))
        assert f.ids == list("abcdef") and f.attrs["pool"] == "none"
        with pytest.raises(ProbeError, match="no features for t=20"):
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
