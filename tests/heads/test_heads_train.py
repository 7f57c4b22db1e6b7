"""Training machinery: determinism, grids, streaming, the fused linear grid, sizing."""
import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

import probe
from heads.heads_data import FAST, blob_files, spatial_blobs, write
from probe.heads.build import build_head, count_params
from probe.heads.compare import compare
from probe.heads.data import FeatureSource, epoch_windows
from probe.heads.linear import LinearGrid
from probe.heads.metrics import classification_metrics
from probe.store import open_features
from tolerances import SGD_REROUNDED, approx_f32, assert_close, assert_close_f32

KEYS = ((10, "a"), (10, "b"), (200, "a"))


def _state(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


@pytest.mark.parametrize("head", ["linear", "attention"])
def test_same_seed_same_result_other_seed_other_result(tmp_path, head):
    tr, te = blob_files(tmp_path)
    opts = dict(FAST, epochs=4, dim=16)
    a = probe.fit(tr, test=te, head=head, seed=3, **opts)
    b = probe.fit(tr, test=te, head=head, seed=3, **opts)
    c = probe.fit(tr, test=te, head=head, seed=4, **opts)
    assert np.array_equal(a.scores, b.scores)  # same seed, same machine, same kernels
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a["seed"] == 3 and a["settings"]["seed"] == 3


@pytest.mark.parametrize("head, grid_width, solver", [
    ("linear", 4096, "sgd"), ("linear", 16, "sgd"), ("linear", None, "lbfgs"), ("mlp", None, None)])
def test_a_grid_trains_each_key_as_if_alone(tmp_path, monkeypatch, head, grid_width, solver):
    # grid_width 16: linear probes on 8 features stacked two by two, in two grids (the
    # SGD recipe's LinearGrid; lbfgs stacks keys its own way, see test_solver.py)
    monkeypatch.setattr("probe.heads.linear.CPU_GRID_WIDTH", grid_width)
    tr, te = blob_files(tmp_path, keys=KEYS)
    opts = dict(FAST, epochs=6, patience=2, solver=solver)  # patience 2: stops differ
    grid = compare(tr, te, heads=[head], **opts)
    for (t, block), row in zip(KEYS, grid):
        alone = probe.fit(tr, test=te, t=t, block=block, head=head, **opts)
        assert (row["t"], row["block"]) == (t, block)
        assert row["keys_in_pass"] == 3 and alone["keys_in_pass"] == 1
        assert row["selected_epoch"] == alone["selected_epoch"]
        assert row["epochs_run"] == alone["epochs_run"]
        assert row["top1"] == alone["top1"]


@pytest.mark.numerics
def test_linear_grid_weights_match_training_alone(tmp_path):
    from probe.heads.fit import train_heads
    from probe.heads.setup import Setup
    from probe.heads.train import TrainConfig

    tr, te = blob_files(tmp_path, keys=KEYS)
    cfg = TrainConfig(epochs=5, batch_size=64, solver="sgd")  # the SGD recipe's LinearGrid
    with Setup(tr, te, KEYS, cfg) as s:
        together = train_heads(s, "linear", list(KEYS), progress=False)
        for key, res in zip(KEYS, together):
            alone = train_heads(s, "linear", [key], progress=False)[0]
            a, b = res.model.state_dict(), alone.model.state_dict()
            for k in a:  # stacked matmuls may round differently from a single one
                assert_close(a[k], b[k], SGD_REROUNDED, what=k)


def test_streaming_gives_the_in_memory_result(tmp_path):
    tr, te = blob_files(tmp_path, n_train=700)
    opts = dict(FAST, epochs=4, head="mlp")
    mem = probe.fit(tr, test=te, stream=False, **opts)
    streamed = probe.fit(tr, test=te, stream=True, **opts)  # one window holds every row
    assert not mem["streamed"] and streamed["streamed"]
    assert np.array_equal(mem.scores, streamed.scores)  # same batches, machine and kernels
    # a memory limit of ~300 rows of 8 pooled floats: windows of 256 rows, still learns
    small = probe.fit(tr, test=te, memory_limit_gb=300 * 8 * 4 / 2**30,
                      **dict(opts, epochs=10))
    assert small["streamed"]
    assert small["top1"] >= 0.85


def test_streamed_batches_mix_the_classes_of_a_class_sorted_file(tmp_path):
    x, y = spatial_blobs(1024)
    order = np.argsort(y, kind="stable")
    path = write(tmp_path / "sorted.h5", {(1, "a"): x[order]}, y[order])
    with open_features(path) as f:  # room for 128 pooled rows (8 floats each)
        src = FeatureSource(f, [((1, "a"), "vec")], memory_limit=128 * 8 * 4, stream=True)
        batches = [yb for _, yb in src.epoch_batches(np.arange(1024), 32, seed=0, epoch=0)]
    assert src.window_rows <= 128
    assert np.array_equal(np.sort(np.concatenate(batches)), np.sort(y))
    assert np.mean([len(np.unique(b)) >= 3 for b in batches]) >= 0.9


@pytest.mark.parametrize("stream", [False, True])
def test_batches_on_the_device_are_the_host_batches(tmp_path, stream):
    """Training slices batches from features held on the device: the same rows, values and
    labels, in the same order, as the host arrays (which the streamed path reads)."""
    tr, _ = blob_files(tmp_path, n_train=300)
    with open_features(tr) as f:
        views = [(f.keys[0], "map"), (f.keys[0], "vec")]
        row_bytes = 4 * (8 * 4 * 4 + 8)  # windows of about 100 rows when streamed
        src = FeatureSource(f, views, memory_limit=100 * row_bytes, stream=stream, block_rows=25)
        rows = np.setdiff1d(np.arange(300), np.arange(0, 300, 7))
        for host, dev in ((src.epoch_batches(rows, 32, 0, 1), src.epoch_batches(rows, 32, 0, 1,
                                                                                 device="cpu")),
                          (src.eval_batches(rows, 32), src.eval_batches(rows, 32, device="cpu"))):
            host, dev = list(host), list(dev)
            assert len(host) == len(dev) > 1
            for (hx, hy), (dx, dy) in zip(host, dev):
                assert list(dx) == views and dy.dtype == torch.int64
                assert torch.equal(dy, torch.from_numpy(np.asarray(hy, np.int64)))
                for v in views:  # copies
                    assert torch.equal(dx[v], torch.from_numpy(hx[v]))
        if not stream:  # held on the CPU without a copy of the arrays
            held, _ = src.held(views, "cpu")
            assert all(held[v].data_ptr() == src.arrays[v].ctypes.data for v in views)
        else:
            assert src.held(views, "cpu") is None


def test_the_head_returned_is_the_selected_epochs(tmp_path):
    """Early stopping keeps a copy of the best epoch and builds the head from it at the
    end: scored again on the validation split, it gives the top-1 and loss recorded then."""
    from probe.heads.setup import split_rows

    tr, _ = blob_files(tmp_path, n_train=400)
    r = probe.fit(tr, head="mlp", **dict(FAST, epochs=12, patience=4, lr=0.02, seed=1))
    assert r["selected_epoch"] < r["epochs_run"]  # the last epoch is not the one kept
    with open_features(tr) as f:
        _, val = split_rows(np.asarray(f.labels), 0.1, 1)
        y = np.asarray(f.labels)[val]
    p = np.asarray(r.scores, np.float64)
    assert r["top1"] == approx_f32(np.mean(p.argmax(1) == y)) == approx_f32(r["val_top1"])
    assert -np.mean(np.log(p[np.arange(len(y)), y])) == approx_f32(r["val_loss"], n=len(y))

def test_epoch_windows_visit_every_training_row_once():
    rows = np.setdiff1d(np.arange(1000), np.arange(0, 1000, 7))
    whole = epoch_windows(rows, 1000, seed=0, epoch=0, window_rows=1000)
    parts = epoch_windows(rows, 1000, seed=0, epoch=0, window_rows=300, block_rows=100)
    assert len(whole) == 1 and len(parts) == 4
    for windows in (whole, parts):
        assert np.array_equal(np.sort(np.concatenate(windows)), rows)
    for w in parts:  # a window reads at most 3 blocks of 100 rows
        assert len(np.unique(w // 100)) <= 3
    again = epoch_windows(rows, 1000, seed=0, epoch=0, window_rows=1000)[0]
    other = epoch_windows(rows, 1000, seed=0, epoch=1, window_rows=1000)[0]
    assert np.array_equal(whole[0], again) and not np.array_equal(whole[0], other)


@pytest.mark.numerics
def test_linear_grid_is_batchnorm_without_affine_then_linear():
    """The fused grid against torch's own BatchNorm1d(affine=False) + Linear, in training
    (batch statistics, running-stat updates) and in eval (running statistics)."""
    dims = [5, 3, 5]
    grid = LinearGrid(dims, 4, [torch.Generator().manual_seed(i) for i in range(3)])
    with torch.no_grad():
        for w in grid.weights:
            w.normal_()
    refs = [grid.export(i).train() for i in range(3)]
    for ref in refs:
        ref.norm.reset_running_stats()
    grid.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        xs = [torch.randn(16, d, generator=gen) * 3 + 1 for d in dims]
        out = grid(xs)
        for x, z, ref in zip(xs, out, refs):
            bn = torch.nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6)
            bn.load_state_dict(ref.norm.state_dict())
            expected = torch.nn.functional.linear(bn(x), ref.fc.weight, ref.fc.bias)
            ref.norm.load_state_dict(bn.state_dict())
            # statistics of 16 rows feeding dot products of up to 5 features
            assert_close_f32(z, expected, n=16 * 5)
    grid.eval()
    xs = [torch.randn(8, d, generator=gen) for d in dims]
    for i, (x, z) in enumerate(zip(xs, grid(xs))):
        exported = grid.export(i)
        assert_close_f32(exported.norm.running_mean, refs[i].norm.running_mean, n=16 * 3)
        assert_close_f32(exported.norm.running_var, refs[i].norm.running_var, n=16 * 3)
        assert_close_f32(z, exported(x), n=16 * 5)


@pytest.mark.numerics
def test_metrics_match_a_direct_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 300)
    labels[labels == 6] = 5  # class 6 absent from the evaluated set
    scores = rng.random((300, 7)) + np.eye(7)[labels] * rng.random((300, 1))
    m = classification_metrics(labels, scores, [f"c{i}" for i in range(7)])
    pred = scores.argmax(1)
    assert m["top1"] == approx_f32(np.mean(pred == labels))  # k / n: one rounding
    top5 = np.argsort(-scores, axis=1)[:, :5]
    assert m["top5"] == approx_f32(np.mean([y in row for y, row in zip(labels, top5)]))
    for c in range(6):
        assert m["per_class_accuracy"][f"c{c}"] == approx_f32(np.mean(pred[labels == c] == c))
    assert m["per_class_accuracy"]["c6"] is None
    cm = np.zeros((7, 7), int)
    np.add.at(cm, (labels, pred), 1)
    assert m["confusion_matrix"] == cm.tolist() == confusion_matrix(labels, pred, labels=range(7)).tolist()
    assert classification_metrics(labels % 3, scores[:, :3], ["a", "b", "c"])["top5"] is None


def test_parameter_counts_and_comparable_size():
    c, k = 256, 10
    budget = c * k + k  # BatchNorm without affine has no parameters
    assert count_params(build_head("linear", (c,), k)[0]) == budget
    mlp, _ = build_head("mlp", (c,), k, {"hidden": (100, 50)})
    assert count_params(mlp) == c * 100 + 100 + 100 * 50 + 50 + 50 * k + k
    for name, shape in (("mlp", (c,)), ("cnn", (c, 4, 4)), ("attention", (c, 4, 4))):
        big, _ = build_head(name, shape, k)
        small, opts = build_head(name, shape, k, comparable_size=True)
        assert abs(count_params(small) - budget) / budget < 0.25, (name, count_params(small))
        assert count_params(big) > 4 * budget
    _, opts = build_head("attention", (c, 4, 4), k, {"num_heads": 2}, comparable_size=True)
    assert opts["dim"] % 2 == 0


def test_comparable_size_is_reported(tmp_path):
    tr, te = blob_files(tmp_path)
    r = probe.fit(tr, test=te, head="mlp", comparable_size=True, **dict(FAST, epochs=2))
    assert r["comparable_size"] is True
    h = r["head_options"]["hidden"][0]
    assert r["params"] == 8 * h + h + h * 4 + 4
    assert abs(r["params"] - 36) <= 8 + 1 + 4  # one hidden unit more or less


@pytest.mark.numerics
def test_attention_without_positions_ignores_where_tokens_are():
    torch.manual_seed(0)
    x = torch.randn(6, 8, 4, 4)
    perm = torch.randperm(16)
    shuffled = x.flatten(2)[:, :, perm].reshape(x.shape)
    head, _ = build_head("attention", (8, 4, 4), 5, {"dim": 16})
    head.eval()
    # attention over 16 tokens of 16 dims, summed in another order
    assert_close_f32(head(x), head(shuffled), n=16 * 16)
    with_pos, _ = build_head("attention", (8, 4, 4), 5, {"dim": 16, "pos_embed": True})
    with torch.no_grad():
        with_pos.pos_embed.normal_()
    with_pos.eval()
    assert not torch.allclose(with_pos(x), with_pos(shuffled), atol=1e-3)
