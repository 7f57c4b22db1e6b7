"""probe extract: its promises, each checked against a source other than the code under test.

Noise is recomputed from the derivation documented in probe/pipeline/noise.py (blake2b of
"seed|id|t|draw"), the DDPM forward process from its formula, block outputs by running the
model by hand, hashes with hashlib, sample order/ids/labels from the bundled npz itself,
and peak memory (VmHWM) in child processes.  Models: the shipped ``dit-fmnist`` (and
``ldae-fmnist``), small enough for one CPU core.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from importlib import resources

import h5py
import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.data import load_dataset
from probe.extractors.registry import MODELS
from probe.store import open_features
from tolerances import assert_close_f32, assert_close_net

BLOCKS = ["blocks.1", "blocks.3"]
QUIET = dict(progress=False, log=lambda *a: None, device="cpu")


@pytest.fixture(scope="module")
def dit():
    return probe.load_model("dit-fmnist", device="cpu")


@pytest.fixture(scope="module")
def ldae():
    return probe.load_model("ldae-fmnist", device="cpu")


@pytest.fixture(scope="module")
def train():
    return load_dataset("demo", "train", 28, 1)


def run(model, out, **kw):
    args = dict(data="demo", t=[100, 900], blocks=BLOCKS, out=str(out), limit=24, pool="mean",
                batch_size=8, **QUIET)
    args.update(kw)
    return probe.extract(model, **args)


def read_all(path):
    with open_features(path) as f:
        return {k: f.load(k) for k in f.keys}, f.ids


# ---- the same computation, written out -----------------------------------------------------
def documented_noise(shape, seed, ids, t, draw=0):
    """probe/pipeline/noise.py's documented derivation: per sample, a CPU generator seeded with the
    first 8 bytes of blake2b("seed|id|t|draw") read little-endian, top bit dropped."""
    out = []
    for sid in ids:
        key = f"{seed}|{sid}|{t}|{draw}".encode()
        g = torch.Generator().manual_seed(
            int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
        out.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(out)


def ddpm_linear(x0, t, eps):
    """DDPM q(x_t | x_0) with the linear schedule 1e-4..0.02 over 1000 steps (float64 abar)."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
    return (abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double()).float()


def token_mean(f):
    """Mean pooling of a block output: tokens (B, N, D) -> (B, D); maps (B, C, H, W) -> (B, C)."""
    return f.mean(dim=1) if f.dim() == 3 else f.mean(dim=(2, 3))


def by_hand(model, data, idx, t, blocks, *, seed=0, draws=(0,), noise=True, q=None):
    """Mean-pooled block features of samples ``idx`` at ``t``, averaged over ``draws``."""
    images = torch.stack([data[i][0] for i in idx])
    x0 = images * 2 - 1  # pixel models: [0, 1] -> [-1, 1]
    ids = [data.ids[i] for i in idx]
    q = q or (lambda x, tt, e: model.q_sample(x, tt, e))
    total = {b: torch.zeros((), dtype=torch.float64) for b in blocks}
    for k in draws:
        x = q(x0, t, documented_noise(x0.shape[1:], seed, ids, t, k)) if noise else x0
        with torch.no_grad():
            out = model.forward_intermediates(x, t, blocks, stop_early=False)
        for b in blocks:
            total[b] = total[b] + token_mean(out[b]).double()
    return {b: (v / len(draws)).numpy() for b, v in total.items()}


def rel_diff(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---- 2. --ensemble K ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dit-fmnist", "ldae-fmnist"])
@pytest.mark.numerics
def test_ensemble_is_the_mean_over_k_documented_draws(name, dit, ldae, train, tmp_path):
    model = {"dit-fmnist": dit, "ldae-fmnist": ldae}[name]
    t, seed, n = 600, 3, 12
    got, ids = read_all(run(model, tmp_path / "k3.h5", t=[t], ensemble=3, noise_seed=seed,
                            limit=n, batch_size=5))
    assert ids == train.ids[:n]
    idx = list(range(n))
    want = by_hand(model, train, idx, t, BLOCKS, seed=seed, draws=(0, 1, 2))
    single = by_hand(model, train, idx, t, BLOCKS, seed=seed, draws=(0,))
    for b in BLOCKS:
        assert_close_net(got[(t, b)], want[b], what=b)
        # averaging three different draws is not one draw: the comparison above can fail
        assert rel_diff(single[b], want[b]) > 0.05, b

    one, _ = read_all(run(model, tmp_path / "k1.h5", t=[t], ensemble=1, noise_seed=seed,
                          limit=n, batch_size=5))
    plain, _ = read_all(run(model, tmp_path / "plain.h5", t=[t], noise_seed=seed, limit=n,
                            batch_size=5))
    for b in BLOCKS:
        np.testing.assert_array_equal(one[(t, b)], plain[(t, b)])  # same machine, same kernels
        assert_close_net(one[(t, b)], single[b], what=b)


# ---- 3. noise_seed, and independence of how the samples are visited ---------------------------
@pytest.mark.numerics
def test_noise_seed_gives_the_documented_noise(dit, train, tmp_path):
    ts, seed, n = [50, 700], 11, 20
    path = run(dit, tmp_path / "s11.h5", t=ts, noise_seed=seed, limit=n)
    got, _ = read_all(path)
    idx = [0, 7, 19]
    for t in ts:
        want = by_hand(dit, train, idx, t, BLOCKS, seed=seed, q=ddpm_linear)
        for b in BLOCKS:
            assert_close_net(got[(t, b)][idx], want[b], what=f"t={t} {b}")

    again, _ = read_all(run(dit, tmp_path / "s11-again.h5", t=ts, noise_seed=seed, limit=n))
    other, _ = read_all(run(dit, tmp_path / "s12.h5", t=ts, noise_seed=seed + 1, limit=n))
    for k in got:
        np.testing.assert_array_equal(again[k], got[k])  # same seed, same machine: bit for bit
    # another seed: other noise, so clearly other features (strongest at large t)
    assert rel_diff(other[(700, "blocks.3")], got[(700, "blocks.3")]) > 0.1
    assert all(np.abs(other[k] - got[k]).max() > 1e-3 for k in got)


class Reordered(torch.utils.data.Dataset):
    """A dataset whose samples are those of ``base`` in another order (same ids)."""

    def __init__(self, base, order):
        self.base, self.order = base, list(order)
        self.ids = [base.ids[i] for i in self.order]
        self.labels = np.asarray(base.labels)[self.order]
        self.spec, self.split, self.class_names = base.spec, base.split, base.class_names

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        return self.base[self.order[i]]

    def bad_reason(self, i):
        return self.base.bad_reason(self.order[i])

    def describe_transform(self):
        return self.base.describe_transform()


@pytest.mark.numerics
def test_features_depend_on_the_sample_not_on_how_the_run_visits_it(dit, train, tmp_path):
    n = 40
    ref, ref_ids = read_all(run(dit, tmp_path / "ref.h5", limit=n, batch_size=32, noise_seed=5))
    by_id = {s: i for i, s in enumerate(ref_ids)}

    # same batches, two loader workers: bit for bit
    got, ids = read_all(run(dit, tmp_path / "w2.h5", limit=n, batch_size=32, num_workers=2,
                            noise_seed=5))
    assert ids == ref_ids
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])  # same machine, same kernels

    order = np.random.default_rng(0).permutation(n)[::-1]
    layouts = {
        "batch 7": dict(limit=n, batch_size=7),
        "limit 13": dict(limit=13, batch_size=32),
        "shuffled, batch 9, 2 workers": dict(data=Reordered(train, order), limit=None,
                                             batch_size=9, num_workers=2),
    }
    expected_ids = {"batch 7": ref_ids, "limit 13": ref_ids[:13],
                    "shuffled, batch 9, 2 workers": [train.ids[i] for i in order]}
    for i, (what, kw) in enumerate(layouts.items()):
        got, ids = read_all(run(dit, tmp_path / f"l{i}.h5", noise_seed=5, **kw))
        assert ids == expected_ids[what], what
        rows = [by_id[s] for s in ids]
        for k in ref:
            # other batch shapes may pick other BLAS kernels: float32 rounding, nothing more
            assert_close_net(got[k], ref[k][rows], what=f"{what} {k}")


# ---- 4. bounded memory -----------------------------------------------------------------------
_CHILD = """
import json, resource, sys
import probe

def peak_rss():
    # VmHWM: the peak RSS of this process's own memory since exec.  (ru_maxrss is not usable
    # here: Linux carries the parent's peak over fork + exec, so children of a big pytest
    # process would all report the parent's size.)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) * 1024

n, out = int(sys.argv[1]), sys.argv[2]
before = peak_rss()
probe.extract("dit-fmnist", data="demo", t=[100], blocks="all", pool="none", limit=n,
              out=out, batch_size=32, progress=False, log=lambda *a: None, device="cpu")
print(json.dumps({"before": before, "peak": peak_rss(),
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _feature_bytes(path):
    with h5py.File(path, "r") as f:
        return sum(int(np.prod(ds.shape)) * ds.dtype.itemsize
                   for g in f["features"].values() for ds in g.values())


def test_peak_memory_does_not_grow_with_the_data(tmp_path):
    """Peak RSS of a 2000-image run exceeds that of a 200-image run by far less than the
    extra feature bytes written: features are streamed, not held.  Held features would grow
    it by at least the extra bytes (~56 MiB here); an 8 MiB HDF5 chunk cache per dataset
    while merging (HDF5 2.0's default) by ~25 MiB; a bounded run by under 3 MiB."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {n: subprocess.Popen([sys.executable, "-c", _CHILD, str(n), str(tmp_path / f"{n}.h5")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
             for n in (200, 2000)}
    peak = {}
    for n, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        rss = json.loads(out.strip().splitlines()[-1])
        assert rss["peak"] > rss["before"]  # the measure sees the extraction at all
        peak[n] = rss["peak"]
    extra = _feature_bytes(tmp_path / "2000.h5") - _feature_bytes(tmp_path / "200.h5")
    assert extra > 50 * 2**20  # large next to RSS jitter, or the test would prove nothing
    growth = peak[2000] - peak[200]
    assert growth < 0.15 * extra, (
        f"peak RSS grew by {growth / 2**20:.1f} MiB for {extra / 2**20:.1f} MiB more features "
        f"(peaks {peak[200] / 2**20:.0f} and {peak[2000] / 2**20:.0f} MiB)")


# ---- 5. what the file records -------------------------------------------------------------------
def _demo_npz(split):
    with resources.files("probe.data").joinpath("demo/fashion_mnist_demo.npz").open("rb") as fh:
        z = np.load(fh)
        return z[f"{split}_labels"], z[f"{split}_index"], z[f"{split}_images"].shape


def test_root_attributes_match_independent_sources(tmp_path, capsys):
    ckpt = tmp_path / "weights" / "my-dit.pt"
    ckpt.parent.mkdir()
    shutil.copy(os.path.join(os.path.dirname(probe.__file__), "weights", "dit-fmnist.pt"), ckpt)
    n, ts, blocks = 150, [5, 900], ["blocks.1", "blocks.3"]
    start = datetime.now(timezone.utc)
    out = run("dit-fmnist", tmp_path / "f.h5", checkpoint=str(ckpt), t="900,5", blocks=blocks,
              split="test", limit=n, pool="none", dtype="float32", noise_seed=7, ensemble=2,
              batch_size=64)
    end = datetime.now(timezone.utc)
    labels, index, image_shape = _demo_npz("test")
    model = probe.load_model("dit-fmnist", checkpoint=str(ckpt), device="cpu")

    with open_features(out) as f:
        a = f.attrs
        assert a["format"] == "probe-features" and a["format_version"] == 1
        assert a["complete"] is True and bool(f.h5.attrs["complete"])
        assert a["checkpoint"] == str(ckpt)
        assert a["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert a["model"] == "dit-fmnist" and a["family"] == MODELS["dit-fmnist"]["family"] == "dit"
        assert a["probe_version"] == probe.__version__
        created = datetime.fromisoformat(a["created"])
        assert created.tzinfo is not None
        assert start - timedelta(seconds=1) <= created <= end
        assert a["timesteps"] == [5, 900] and a["blocks"] == blocks
        assert a["model_blocks"] == model.block_names  # what block ids count in
        assert a["pool"] == "none" and a["dtype"] == "float32"
        assert a["noise_seed"] == 7 and a["ensemble"] == 2 and a["add_noise"] is True
        assert a["class_label"] is None
        assert a["data"] == "demo" and a["split"] == "test"
        assert a["num_samples"] == n and a["num_skipped"] == 0
        assert a["image_size"] == model.image_size == image_shape[1] == 28
        assert a["schedule"] == {"type": "ddpm", "kind": MODELS["dit-fmnist"]["schedule"],
                                 "num_timesteps": 1000}
        abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
        # "linear" is true: diffusers' betas are float32, so relative float32 roundings
        assert_close_f32(model.schedule.alphas_cumprod, abar, n=1000, scale=abar.abs())
        # the dataset's transform (to 28 px, 1 channel), then what the model does to pixels
        assert a["transform"].startswith(load_dataset("demo", "test", 28, 1).describe_transform())
        assert "28" in a["transform"] and "[-1,1]" in a["transform"].replace(" ", "")
        assert a["model_info"] == json.loads(json.dumps(model.describe()))
        assert a["weights_sha256"] != a["checkpoint_sha256"] and re.fullmatch(
            "[0-9a-f]{64}", a["weights_sha256"])
        assert a["command"].startswith("probe")
        assert "settings" not in a  # each setting is stored once, as its own attribute

        np.testing.assert_array_equal(f.labels, labels[:n])
        assert f.ids == [f"test/{i}" for i in index[:n]]
        assert f.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                 "Shirt", "Sneaker", "Bag", "Ankle boot"]
        assert f.h5["labels"].dtype == np.int64
        assert sorted(f.keys) == [(t, b) for t in ts for b in blocks]
        for key in f.keys:
            ds = f.dataset(key)
            assert ds.shape == (n, 128, 4, 4) and ds.dtype == np.float32  # 16 tokens of 128
            row_bytes = 128 * 4 * 4 * 4
            assert ds.chunks == (min(n, 2**20 // row_bytes),) + ds.shape[1:]
            assert ds.chunks[0] < n  # really chunked along N here
            assert ds.attrs["t"] == key[0] and ds.attrs["block"] == key[1]
        names = sorted(f.h5.attrs)

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "status: complete" in text
    shown = {line.strip().split(":", 1)[0] for line in text.splitlines()}
    # format and the settings copy are implied; `complete` is the status line
    missing = [k for k in names if k not in shown and k not in ("format", "settings", "complete")]
    assert not missing, f"`probe info` does not show {missing}"
    assert f"checkpoint_sha256: {hashlib.sha256(ckpt.read_bytes()).hexdigest()}" in text
    for key in [(5, "blocks.1"), (900, "blocks.3")]:
        assert f"t{key[0]}/{key[1]}: ({n}, 128, 4, 4) float32" in text


# ---- 6. progress bar and summary of the CLI --------------------------------------------------
def test_cli_shows_images_per_second_and_a_summary(tmp_path):
    out, n = tmp_path / "cli.h5", 96
    args = ["extract", "--model", "dit-fmnist", "--data", "demo", "--limit", str(n),
            "--t", "10,100", "--blocks", "1,4", "--batch-size", "32", "--device", "cpu",
            "--out", str(out)]
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.time() - t0
    assert p.returncode == 0, p.stderr

    # tqdm (unit "img"): the last state of the bar is the whole split at some img/s
    bars = [s for s in p.stderr.replace("\r", "\n").splitlines() if s.startswith("extract:")]
    assert bars, p.stderr[-500:]
    bar = bars[-1]
    assert re.search(rf"extract: 100%.*\b{n}/{n} \[.*[\d.]+img/s\]", bar), p.stderr[-500:]

    lines = p.stdout.strip().splitlines()
    m = re.fullmatch(r"wrote (.+) \(([\d.]+) MiB\): (\d+) images in ([\d.]+) s \(([\d.]+) img/s\)",
                     lines[0])
    assert m, p.stdout
    assert m[1] == str(out) and int(m[3]) == n
    assert m[2] == f"{os.path.getsize(out) / 2**20:.1f}"
    seconds, rate = float(m[4]), float(m[5])
    assert 0 < seconds <= wall
    # both printed to 0.1: the true time lies within 0.05 s of `seconds`, the rate agrees
    assert n / (seconds + 0.05) - 0.05 <= rate <= n / max(seconds - 0.05, 1e-9) + 0.05
    with h5py.File(out, "r") as f:
        shapes = {f"t={t[1:]} {b}": (f[f"features/{t}/{b}"].shape, f[f"features/{t}/{b}"].dtype)
                  for t in f["features"] for b in f["features"][t]}
        assert f.attrs["command"] == "probe " + " ".join(args)
    assert len(shapes) == 4 and len(lines) == 1 + len(shapes)
    for key, (shape, dtype) in shapes.items():
        t, block = key.split(" ")
        assert shape == (n, 128)
        assert any(re.fullmatch(rf"\s*{re.escape(t)}\s+{re.escape(block)}\s+"
                                rf"{re.escape(str(shape))} {dtype}", line) for line in lines[1:]), (
            key, p.stdout)
