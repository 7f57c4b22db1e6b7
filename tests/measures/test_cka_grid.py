"""The grid over feature files: key choice, pairing by id, batching, reading, panels."""
import h5py
import numpy as np
import pytest
import torch

import probe
from probe.measures import cka, cka_matrix, grid
from probe.errors import ProbeError
from probe.store import write_features
from tolerances import approx_f32, approx_f64, assert_close_f32, assert_close_f64

BLOCKS = ["input_blocks.1", "middle_block", "output_blocks.2"]


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    n = 40
    z = rng.standard_normal((n, 6))
    out = {}
    for t in (500, 10, 100):  # written out of order on purpose
        for i, b in enumerate(BLOCKS):
            w = rng.standard_normal((6, 8 * (i + 1)))
            f = np.tanh(z @ w) + t / 200 * rng.standard_normal((n, 8 * (i + 1)))
            out[(t, b)] = f.reshape(n, 2 * (i + 1), 2, 2) if b == "middle_block" else f
    return out


@pytest.fixture
def path(tmp_path, feats):
    n = len(next(iter(feats.values())))
    return write_features(tmp_path / "f.h5", feats, labels=np.arange(n) % 4,
                          ids=[f"s{i}" for i in range(n)])


@pytest.mark.numerics
def test_file_grid_equals_in_memory_matrix_in_forward_order(path, feats):
    r = probe.cka(path)  # the top-level API
    keys = sorted(feats, key=lambda k: (k[0], BLOCKS.index(k[1])))
    assert r.rows == r.cols == keys
    assert r.row_labels[:2] == ["t10/input_blocks.1", "t10/middle_block"]
    # other groupings of the float32 Grams (up to 24 products per entry); CKA is at most 1
    assert_close_f32(r.matrix, cka_matrix([feats[k].astype(np.float32) for k in keys]), n=24,
                     scale=1)


@pytest.mark.numerics
def test_pairs_by_id_across_files(tmp_path, path, feats):
    n = 40
    perm = np.random.default_rng(1).permutation(n)
    other = write_features(tmp_path / "g.h5", {k: v[perm] for k, v in feats.items()},
                           labels=np.zeros(n, int), ids=[f"s{i}" for i in perm])
    same = cka(path, keys=["t10"])
    cross = cka(path, other, keys=["t10"])
    assert_close_f32(cross.matrix, same.matrix, n=24, scale=1)  # rows in another order
    # the minibatch path pairs the same way
    assert_close_f32(cka(path, other, keys=["t10"], minibatch=16).matrix,
                     cka(path, keys=["t10"], minibatch=16).matrix, n=24, scale=1)


def test_mismatched_ids_say_how_many_differ(tmp_path, path, feats):
    ids = [f"s{i}" for i in range(40)]
    ids[3], ids[7] = "x3", "x7"
    other = write_features(tmp_path / "g.h5", feats, labels=np.zeros(40, int), ids=ids)
    with pytest.raises(ProbeError, match="2 of the 40 ids in the first are not in the second and 2"):
        cka(path, other)
    short = write_features(tmp_path / "h.h5", {k: v[:30] for k, v in feats.items()},
                           labels=np.zeros(30, int), ids=[f"s{i}" for i in range(30)])
    with pytest.raises(ProbeError, match="10 of the 40 ids in the first are not in the second and 0"):
        cka(path, short)
    dup = write_features(tmp_path / "d.h5", feats, labels=np.zeros(40, int),
                         ids=[f"s{i // 2}" for i in range(40)])
    with pytest.raises(ProbeError, match="lists 20 sample ids twice"):
        cka(path, dup)


def test_second_file_keys(tmp_path, path, feats):
    other = write_features(tmp_path / "r.h5", {(0, "layer4"): feats[(10, "input_blocks.1")]},
                           labels=np.zeros(40, int), ids=[f"s{i}" for i in range(40)])
    with pytest.raises(ProbeError, match="--keys-b"):
        cka(path, other, keys=["t10"])
    r = cka(path, other, keys=["t10"], keys_b=["layer4"])
    assert r.cols == [(0, "layer4")] and r.value("t10/input_blocks.1", "t0/layer4") == approx_f32(
        1.0, n=8, scale=1)
    # a single-timestep second file goes with every panel
    panels = cka(path, other).panels("blocks")
    assert [p.title for p in panels] == ["t = 10", "t = 100", "t = 500"]
    assert all(p.col_labels == ["layer4"] for p in panels)


def test_default_layout_has_something_to_draw(tmp_path, path, feats):
    x = feats[(10, "input_blocks.1")]
    net = write_features(tmp_path / "n.h5", {(0, "layer3"): x, (0, "layer4"): x ** 2},
                         labels=np.zeros(40, int), ids=[f"s{i}" for i in range(40)])
    # one block against a single-t network: a panel per t, B's layers in each
    assert cka(path, net, keys=["middle_block"], keys_b=["layer3", "layer4"]).across == "blocks"
    odd = write_features(tmp_path / "o.h5", {(1, "p"): x, (2, "q"): x ** 2},
                         labels=np.zeros(40, int), ids=[f"s{i}" for i in range(40)])
    # no shared timesteps or blocks: one panel of everything
    assert cka(path, odd, keys=["middle_block"], keys_b=["p", "q"]).across == "all"
    with pytest.raises(ProbeError, match="share no timesteps"):
        cka(path, odd, keys_b=["p", "q"], across="blocks")


def test_batches():
    b = grid.make_batches(10, 4, 4, shuffle=False)
    assert [list(x) for x in b] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]  # 2 left over: merged
    b = grid.make_batches(103, 25, 4, shuffle=True, seed=3)
    assert sorted(np.concatenate(b)) == list(range(103)) and [len(x) for x in b] == [25] * 3 + [28]
    assert any(x.max() - x.min() > 25 for x in b)  # shuffled: batches span the file
    assert [list(x) for x in grid.make_batches(10, None, 4)] == [list(range(10))]


def test_shuffled_minibatches_sample_a_class_sorted_file():
    """On a file sorted by class, batches in file order each see one class and the
    minibatch CKA drifts from the full-batch value; shuffled batches do not."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(8), 100)
    centres = rng.standard_normal((8, 16)) * 3
    x = centres[labels] + rng.standard_normal((800, 16))
    y = np.tanh(x @ rng.standard_normal((16, 16)) / 3) + 0.5 * rng.standard_normal((800, 16))
    full = cka_matrix([x], [y], unbiased=True)[0, 0]
    ordered = cka_matrix([x], [y], minibatch=100, shuffle=False)[0, 0]
    shuffled = cka_matrix([x], [y], minibatch=100, shuffle=True)[0, 0]
    assert abs(shuffled - full) < 0.02
    assert abs(ordered - full) > 0.3  # within-class batches: about 0.25 against 0.69


def test_read_rows_matches_numpy_indexing(tmp_path, monkeypatch):
    data = np.arange(300 * 6, dtype=np.float32).reshape(300, 3, 2)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=data, chunks=(16, 3, 2))
    idx = np.sort(np.random.default_rng(0).choice(300, 50, replace=False))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        for gap in (1, 24, 10 ** 6):  # every row its own read ... one read of the span
            monkeypatch.setattr(grid, "GAP_BYTES", gap)
            np.testing.assert_array_equal(grid.read_rows(f["x"], idx), data[idx])
            np.testing.assert_array_equal(grid.read_rows(f["x"], idx, slice(1, 3)), data[idx, 1:3])
        np.testing.assert_array_equal(grid.read_rows(f["x"], np.arange(5, 9)), data[5:9])


@pytest.mark.numerics
def test_grouped_and_slabbed_reading_give_the_same_matrix(path, monkeypatch):
    whole = cka(path, dtype="float64")  # keys of one size share a batched product
    monkeypatch.setattr(grid, "GROUP_GRAM_BYTES", 1)  # each key alone
    alone = cka(path, dtype="float64")
    monkeypatch.setattr(grid, "SLAB_BYTES", 64)  # and read a channel at a time
    slabbed = cka(path, dtype="float64")
    # float64 Grams of up to 24 products, HSICs over 40 x 40 entries
    assert_close_f64(alone.matrix, whole.matrix, n=24 * 40 * 40, scale=1)
    assert_close_f64(slabbed.matrix, whole.matrix, n=24 * 40 * 40, scale=1)


def test_memory_guard_suggests_minibatch(path, monkeypatch):
    monkeypatch.setattr(grid, "MAX_GRAM_BYTES", 1000)
    with pytest.raises(ProbeError, match="use a minibatch"):
        cka(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_unavailable_device_is_a_clear_error(path):
    with pytest.raises(ProbeError, match="no CUDA device is available"):
        cka(path, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_gpu_matches_cpu(path):
    assert_close_f32(cka(path, device="cuda").matrix, cka(path).matrix, n=24, scale=1)


def test_bad_options(path):
    for kwargs, match in [({"kernel": "poly"}, "unknown CKA kernel"),
                          ({"across": "layers"}, "unknown across"),
                          ({"kernel": "rbf", "sigma": 0}, "sigma must be a positive"),
                          ({"dtype": "float16"}, "unknown CKA dtype")]:
        with pytest.raises(ProbeError, match=match):
            cka(path, **kwargs)


def test_panels_and_lines(path):
    r = cka(path)
    assert r.across == "blocks"
    p = r.panels()
    assert [x.title for x in p] == ["t = 10", "t = 100", "t = 500"]
    assert p[1].row_labels == BLOCKS
    np.testing.assert_array_equal(r.matrix[np.ix_(p[1].rows, p[1].cols)],  # the same numbers
                                  [[r.value((100, a), (100, b)) for b in BLOCKS] for a in BLOCKS])
    q = r.panels("timesteps")
    assert [x.title for x in q] == BLOCKS and q[0].row_labels == ["t=10", "t=100", "t=500"]
    assert len(r.panels("all")) == 1
    lines, what = r.line(["middle_block"])
    ts, vals = lines["middle_block"]
    assert ts == [10, 100, 500] and "t=10" in what
    assert vals == [r.value((t, "middle_block"), (10, "middle_block")) for t in ts]
    assert vals[0] == approx_f64(1.0, n=40 * 40, scale=1)  # a key with itself
    with pytest.raises(ProbeError, match="second file"):
        r.line(ref="same")
    only = cka(path, keys=["middle_block"])
    assert only.across == "timesteps"  # one block: the panels go across timesteps
    with pytest.raises(ProbeError, match="not among the CKA columns"):
        cka(path, keys=["t100", "t500"]).line(ref="t10")
