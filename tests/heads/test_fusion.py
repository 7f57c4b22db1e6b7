"""The fusion head: one head on several (t, block) keys, mixed with learned softmax weights."""
import csv
import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from sklearn.metrics import accuracy_score

import probe
from heads.heads_data import FAST, blob_files, gaussian_classes, write
from probe.cli import main
from probe.errors import ProbeError
from probe.heads.compare import compare
from probe.heads.fit import split_options
from probe.heads.fusion import FusionHead, build_fusion, train_fusion
from probe.heads.setup import Setup
from tolerances import approx_f32, assert_close_f32

KEYS = ((10, "a"), (10, "b"), (100, "a"))
TRAIN = dict(FAST, epochs=20, lr=3e-3)


def _signal_files(tmp_path, signal_key, n_train=400, n_test=300):
    """Vector features under KEYS: ``signal_key`` holds separable Gaussian classes, the
    others noise with the same labels (they say nothing about the class)."""
    x, y = gaussian_classes(n_train + n_test, classes=4, dim=16, sep=4.0)
    rng = np.random.default_rng(5)
    feats = {k: (x if k == signal_key else rng.normal(size=x.shape).astype(np.float32))
             for k in KEYS}
    return (write(tmp_path / "tr.h5", {k: v[:n_train] for k, v in feats.items()}, y[:n_train],
                  pool="mean"),
            write(tmp_path / "te.h5", {k: v[n_train:] for k, v in feats.items()}, y[n_train:],
                  pool="mean", split="test"), y[n_train:])


@pytest.mark.numerics
def test_shapes_and_weights():
    vec = FusionHead([(8,), (16,)], 5, head="linear", dim=12)
    xs = [torch.randn(6, 8), torch.randn(6, 16)]
    assert vec(xs).shape == (6, 5)
    maps = FusionHead([(8, 4, 4), (6, 2, 2)], 3, head="attention", dim=16, num_heads=2)
    assert maps.grid == (2, 2)  # every map pooled to the smallest grid
    assert maps([torch.randn(4, 8, 4, 4), torch.randn(4, 6, 2, 2)]).shape == (4, 3)
    with torch.no_grad():
        vec.mix_logits.copy_(torch.tensor([0.3, -1.0]))
    w = vec.weights()
    assert_close_f32(w.sum(), 1.0, n=2)  # a softmax of two
    assert_close_f32(w, torch.softmax(10 * torch.tensor([0.3, -1.0]), 0), n=2)  # MIX_GAIN


@pytest.mark.parametrize("signal_key", [(10, "b"), (100, "a")])
def test_the_key_that_carries_the_label_gets_the_largest_weight(tmp_path, signal_key):
    """Invariance: the largest weight follows the signal wherever it is put."""
    tr, te, y = _signal_files(tmp_path, signal_key)
    r = probe.fit(tr, test=te, head="fusion", **TRAIN)
    weights = r["key_weights"]
    assert list(weights) == [f"t{t}/{b}" for t, b in sorted(KEYS)]
    assert sum(weights.values()) == approx_f32(1.0, n=len(weights))  # a float32 softmax
    assert max(weights, key=weights.get) == f"t{signal_key[0]}/{signal_key[1]}"
    assert weights[f"t{signal_key[0]}/{signal_key[1]}"] > 0.5  # uniform would be 1/3
    assert r["top1"] >= 0.95 and r["top1"] == accuracy_score(y, r["predictions"])
    assert r["keys"] == list(weights) and r["t"] is None and r["block"] is None
    saved = json.loads(open(r.save(tmp_path / "r.json")).read())
    assert saved["key_weights"] == weights
    assert imread(tmp_path / "r_weights.png").ndim == 3


def _one_key(tmp_path, key, options):
    head_opts, cfg = split_options({k: v for k, v in options.items() if k != "progress"})
    with Setup(tmp_path / "tr.h5", tmp_path / "te.h5", [key], cfg) as setup:
        return train_fusion(setup, [key], head_opts, progress=False, min_keys=1)


def test_fusion_of_one_key_matches_the_single_key_head(tmp_path):
    tr, te, _ = _signal_files(tmp_path, (10, "a"))
    single = probe.fit(tr, test=te, head="linear", t=10, blocks="a", progress=False)
    fused = _one_key(tmp_path, (10, "a"), TRAIN)
    assert fused["key_weights"] == {"t10/a": 1.0}
    assert abs(fused["top1"] - single["top1"]) <= 0.03


def test_attention_fusion_reads_maps(tmp_path):
    tr, te = blob_files(tmp_path, keys=((10, "a"), (100, "a")))
    opts = dict(FAST, epochs=20, batch_size=32, lr=3e-3, dim=16)
    r = probe.fit(tr, test=te, head="fusion", fusion_head="attention", **opts)
    assert r["top1"] >= 0.95 and r["head_options"]["fusion_head"] == "attention"
    assert r["input"] == "2 keys, each map (8, 4, 4)"


def test_comparable_size_is_a_linear_head_on_all_keys():
    """The width chosen gives the parameter count closest to a linear probe on the keys'
    features side by side, among the widths the head allows (steps of num_heads)."""
    k = 10
    budget = (128 + 64 + 32) * k + k
    for head, shapes, step in (("linear", [(128,), (64,), (32,)], 1),
                               ("attention", [(128, 2, 2), (64, 2, 2), (32, 2, 2)], 4)):
        opts = {"fusion_head": head, "dim": 128, "depth": 1, "num_heads": 4, "pos_embed": False}

        def off(dim):
            module, _ = build_fusion(shapes, k, {**opts, "dim": dim})
            return abs(sum(p.numel() for p in module.parameters()) - budget)

        _, used = build_fusion(shapes, k, opts, comparable_size=True)
        dim = used["dim"]
        assert dim % step == 0 and off(dim) <= min(off(max(step, dim - step)), off(dim + step))
        assert off(dim) < 0.3 * budget


def test_bad_input_is_one_line(tmp_path, capsys):
    tr, te, _ = _signal_files(tmp_path, (10, "a"))

    def cli_error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("probe: error: ") and "\n" not in err
        return err

    assert "gives 1 (t10/a)" in cli_error(["fit", tr, "--head", "fusion", "--keys", "t10/a"])
    assert "no block 'zz'" in cli_error(["fit", tr, "--head", "fusion", "--keys", "t10/a,t10/zz"])
    assert "needs spatial maps" in cli_error(["fit", tr, "--head", "fusion", "--fusion-head",
                                              "attention"])
    # a test file from another model, and one without a key the head reads
    x, y = gaussian_classes(50, classes=4, dim=16)
    other = write(tmp_path / "other.h5", {k: x for k in KEYS}, y, pool="mean", model="dit",
                  split="test")
    assert "made differently" in cli_error(["fit", tr, "--test", other, "--head", "fusion"])
    short = write(tmp_path / "short.h5", {k: x for k in KEYS[:2]}, y, pool="mean", split="test")
    assert "has no features at t=100" in cli_error(["fit", tr, "--test", short, "--head", "fusion"])
    assert "single-key heads" in cli_error(["compare", tr, te, "--heads", "fusion"])
    with pytest.raises(ProbeError, match="unknown --fusion-head"):
        probe.fit(tr, head="fusion", fusion_head="cnn", progress=False)


def test_cli_fit_and_compare(tmp_path, capsys):
    tr, te, _ = _signal_files(tmp_path, (10, "b"))
    out = tmp_path / "fusion.json"
    flags = ["--epochs", "20", "--lr", "3e-3", "--batch-size", "64", "--patience", "12", "--quiet"]
    assert main(["fit", tr, "--test", te, "--head", "fusion", "--t", "10", "--blocks", "a,b",
                 "--out", str(out)] + flags) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["keys"] == ["t10/a", "t10/b"] and set(r["key_weights"]) == set(r["keys"])
    assert "learned key weights" in printed and "fusion_weights.png" in printed
    assert imread(tmp_path / "fusion_weights.png").ndim == 3
    assert main(["fit", tr, "--head", "fusion", "--keys", "t10/a,t10/b", "--out", str(out)]
                + flags) == 2  # no --overwrite
    capsys.readouterr()

    cmp = tmp_path / "cmp"
    assert main(["compare", tr, te, "--heads", "linear,fusion", "--out", str(cmp)] + flags) == 0
    with open(cmp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    fused = [row for row in rows if row["head"] == "fusion"]
    assert len(rows) == len(KEYS) + 1 and len(fused) == 1
    assert fused[0]["keys"] == " + ".join(f"t{t}/{b}" for t, b in sorted(KEYS))
    assert "Fusion head: one head on all 3 keys" in (cmp / "results.md").read_text()
    assert imread(cmp / "fusion_weights.png").ndim == 3
    # the API's compare trains the same fusion head as the CLI's
    rows_api = compare(tr, te, heads=["linear", "fusion"], **TRAIN)
    assert [row["top1"] for row in rows_api] == [float(row["top1"]) for row in rows]


def test_the_warm_start_is_the_mean_of_the_chosen_probes():
    """warm_start puts each key's linear probe in its branch: the head's scores are those
    of the chosen probes' mean logits.  The LayerNorm is linear up to the logits' share of
    its variance, (sum of squared logits) / (2 LEVEL^2) ~ 1e-4 here, hence the tolerance."""
    from probe.heads.fusion import LEVEL, warm_start
    from probe.heads.linear import LinearHead

    torch.manual_seed(0)
    dims, k = (8, 16, 12), 5
    probes = []
    for d in dims:
        p = LinearHead(d, k)
        with torch.no_grad():
            p.norm.running_mean.normal_()
            p.norm.running_var.uniform_(0.5, 2.0)
            p.fc.weight.normal_()
            p.fc.bias.normal_()
        probes.append(p.eval())
    xs = [torch.randn(64, d) * 2 + 1 for d in dims]
    with torch.no_grad():
        logits = [p(x) for p, x in zip(probes, xs)]
    assert max(float(l.abs().max()) for l in logits) < LEVEL / 30  # a probe's scale
    for chosen in ([1], [0, 2], [0, 1, 2]):
        head = FusionHead([(d,) for d in dims], k, dim=32).eval()
        warm_start(head, probes, chosen)
        w = head.weights()
        assert torch.allclose(w[chosen], torch.full((len(chosen),), 1 / len(chosen)), atol=1e-3)
        with torch.no_grad():
            got = torch.softmax(head(xs), 1)
            want = torch.softmax(sum(w[i] * logits[i] for i in range(len(dims))), 1)
        assert torch.allclose(got, want, atol=2e-3)
        if chosen == [1]:
            assert torch.equal(got.argmax(1), logits[1].argmax(1))
