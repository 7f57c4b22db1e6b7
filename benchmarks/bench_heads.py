"""Heads: what a grid of linear probes costs, streaming against memory, and every head and
baseline on real data (Fashion-MNIST), all measured side by side in one run.

    python benchmarks/bench_heads.py             # grid + streaming + Fashion-MNIST
    python benchmarks/bench_heads.py --quick     # smaller sizes, a few minutes
    python benchmarks/bench_heads.py --skip-real # synthetic parts only
    python benchmarks/bench_heads.py --only-epochs [--before DIR] [--features TRAIN.h5]

1. Grid: N linear probes (the SGD recipe, --solver sgd) on N keys trained in one pass
   (sharing batches, stacked into one batched matmul) against the same N probes trained
   one after the other.
2. Streaming: the same grid read from the HDF5 file in windows against from memory.
3. Real data: `probe extract` of Fashion-MNIST (official split, a balanced subset) through
   a small random-init ADM U-Net at two timesteps, pool avg4; then `probe compare` with
   linear, mlp, cnn, attention (default and comparable size), logreg and knn.
4. One epoch of the mlp, cnn and attention heads on the demo features (ldae-fmnist, t=10,
   blocks.3, pool avg2: 1,800 train / 200 validation rows): probe's training loop
   (`train_pass`, validating every epoch as early stopping does) against a bare loop of
   the same model's forward, backward and optimizer step on batches made beforehand, in
   CPU seconds of one thread (robust to a shared machine), each in a fresh process, the
   median of --repeat runs.  ``--before DIR`` also runs an older `probe` package (a
   folder holding it, e.g. `git archive REV probe | tar -x -C DIR`), interleaved.
"""
import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import probe
from probe.heads.compare import compare
from probe.store import open_features, write_features

REPEAT = 3  # timings are the best of 3 runs


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} at start")


def grid_file(path, n, dim, keys, classes=10, seed=0):
    """Features with a linear class signal of different strength per key."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    means = rng.standard_normal((classes, dim)).astype(np.float32)
    feats = {}
    for i in range(keys):
        feats[(100, f"block{i}")] = (means[y] * (0.05 + 0.01 * i)
                                     + rng.standard_normal((n, dim)).astype(np.float32))
    write_features(path, feats, labels=y, attrs={"model": "synthetic", "pool": "mean"})


def timed(fn, repeat=1):
    """(best wall time of ``repeat`` runs, the last result): the machine may be shared."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_grid(tmp, n, dim, counts, epochs):
    print(f"\n## 1. A grid of linear probes (SGD recipe): one pass vs one run per key "
          f"({n} samples, D={dim}, {epochs} epochs, no early stop; best of {REPEAT})\n")
    path = os.path.join(tmp, "grid.h5")
    grid_file(path, n, dim, max(counts))
    # the SGD recipe (the linear head defaults to L-BFGS, which has no epochs)
    opts = dict(solver="sgd", epochs=epochs, patience=epochs, progress=False, val_fraction=0.1)
    with open_features(path) as f:
        keys = f.keys
    probe.fit(path, t=keys[0][0], block=keys[0][1], head="linear", **opts)  # warm up
    single = []
    for t, b in keys[:max(counts)]:
        s, r = timed(lambda: probe.fit(path, t=t, block=b, head="linear", **opts), REPEAT)
        single.append((s, r["top1"]))
    print("| probes | one pass (s) | one run per key (s) | one pass vs one probe | "
          "one run per key / one pass | same top-1 as alone |")
    print("|---|---|---|---|---|---|")
    one = None
    for k in counts:
        blocks = [b for _, b in keys[:k]]
        s, rows = timed(lambda: compare(path, heads=["linear"], blocks=blocks, **opts), REPEAT)
        one = one or s
        sep = sum(x for x, _ in single[:k])
        same = all(r["top1"] == single[i][1] for i, r in enumerate(rows))
        print(f"| {k} | {s:.2f} | {sep:.2f} | {s / one:.2f}x | {sep / s:.1f}x | {same} |")
    k = counts[-2] if len(counts) > 1 else counts[0]
    blocks = [b for _, b in keys[:k]]
    cli = [sys.executable, "-m", "probe"]
    flags = ["--solver", "sgd", "--epochs", str(epochs), "--patience", str(epochs), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    fits, _ = timed(lambda: [subprocess.run(cli + ["fit", path, "--t", "100", "--block", b,
                                                   "--out", os.path.join(tmp, f"{b}.json")] + flags,
                                            check=True, capture_output=True, env=env)
                             for b in blocks])
    grid, _ = timed(lambda: subprocess.run(cli + ["compare", path, "--heads", "linear", "--blocks",
                                                  ",".join(blocks), "--out", os.path.join(tmp, "cmp")]
                                           + flags, check=True, capture_output=True, env=env))
    print(f"\nFrom the command line, {k} keys: {k} x `probe fit` {fits:.1f} s, one "
          f"`probe compare` {grid:.1f} s ({fits / grid:.1f}x; each process pays its imports "
          "and file opening)")
    return path


def bench_stream(path, keys, epochs):
    print(f"\n## 2. Streaming from HDF5 vs in memory (linear grid of {keys} keys)\n")
    with open_features(path) as f:
        blocks = f.blocks[:keys]
        nbytes = sum(f.dataset((100, b)).nbytes for b in blocks)
    opts = dict(heads=["linear"], blocks=blocks, solver="sgd", epochs=epochs, patience=epochs,
                progress=False)
    mem, rows_m = timed(lambda: compare(path, stream=False, **opts), REPEAT)
    one, rows_1 = timed(lambda: compare(path, stream=True, **opts), REPEAT)
    limit = nbytes / 8 / 2 ** 30
    win, rows_w = timed(lambda: compare(path, stream=True, memory_limit_gb=limit, **opts), REPEAT)
    print("| mode | time (s) | vs memory | mean top-1 |")
    print("|---|---|---|---|")
    for name, s, rows in (("in memory", mem, rows_m), ("streamed, one window", one, rows_1),
                          (f"streamed, windows of 1/8 ({limit * 1024:.0f} MiB)", win, rows_w)):
        print(f"| {name} | {s:.2f} | {s / mem:.2f}x | {np.mean([r['top1'] for r in rows]):.4f} |")
    print(f"\nstreamed with one window gives the in-memory result exactly: "
          f"{[r['top1'] for r in rows_1] == [r['top1'] for r in rows_m]}")


def extract(tmp, split, limit, ts):
    out = os.path.join(tmp, f"fmnist-{split}-{limit}.h5")
    if os.path.exists(out):
        return out
    cmd = [sys.executable, "-m", "probe", "extract", "--model", "adm", "--random-init",
           "--config", "image_size=32", "--config", "num_channels=64",
           "--config", "num_res_blocks=1", "--config", "class_cond=false",
           "--config", "attention_resolutions=8", "--config", "num_head_channels=32",
           "--config", "channel_mult=1,2,2", "--data", "fashion-mnist", "--split", split,
           "--limit", str(limit), "--t", ts, "--blocks", "input_blocks.2,middle_block,output_blocks.3",
           "--pool", "avg4", "--batch-size", "64", "--out", out, "--quiet"]
    s, _ = timed(lambda: subprocess.run(cmd, check=True))
    print(f"extracted {split}: {limit} images in {s:.0f} s -> {out}")
    return out


def bench_real(tmp, n_train, n_test):
    print(f"\n## 3. Fashion-MNIST through a random-init ADM U-Net ({n_train} train / {n_test} "
          f"test images, t=10,200, pool avg4, default training settings)\n")
    tr = extract(tmp, "train", n_train, "10,200")
    te = extract(tmp, "test", n_test, "10,200")
    out = os.path.join(tmp, "compare")
    heads = ["linear", "mlp", "cnn", "attention", "logreg", "knn"]
    s, rows = timed(lambda: compare(tr, te, heads=heads, out=out, progress=False))
    print(open(os.path.join(out, "results.md")).read())
    s2, small = timed(lambda: compare(tr, te, heads=["mlp", "cnn", "attention"],
                                      comparable_size=True, progress=False))
    print("Comparable size (each head sized to the linear head's parameter count):\n")
    print("| block | t | head | params | top-1 |")
    print("|---|---|---|---|---|")
    for r in small:
        print(f"| {r['block']} | {r['t']} | {r['head']} | {r['params']} | {100 * r['top1']:.1f} |")
    lin = {(r["t"], r["block"]): r["top1"] for r in rows if r["head"] == "linear"}
    lg = {(r["t"], r["block"]): r["top1"] for r in rows if r["head"] == "logreg"}
    diffs = [100 * (lin[k] - lg[k]) for k in lin]
    print(f"\nlinear minus logreg top-1, per key (points): "
          f"{', '.join(f'{d:+.1f}' for d in diffs)}; mean {np.mean(diffs):+.2f}")
    print(f"compare (6 heads) took {s:.0f} s, comparable-size run {s2:.0f} s; "
          f"plots in {out}")


DEMO_KEY = (10, "blocks.3")  # the demo's best key for ldae-fmnist
EPOCHS_TIMED = {"mlp": 10, "cnn": 6, "attention": 3}  # about 1-3 s of each loop


def demo_features(tmp, given=None):
    """The demo's training features of ldae-fmnist at DEMO_KEY (pool avg2, a 2x2 map)."""
    if given:
        return given
    out = os.path.join(tmp, "ldae-fmnist-demo-train.h5")
    if not os.path.exists(out):
        subprocess.run([sys.executable, "-m", "probe", "extract", "--model", "ldae-fmnist",
                        "--data", "demo", "--split", "train", "--t", str(DEMO_KEY[0]),
                        "--blocks", DEMO_KEY[1], "--pool", "avg2", "--threads", "1",
                        "--out", out, "--quiet"], check=True)
    return out


def _loop_cost(setup, head, view, cfg, source):
    """(CPU seconds of probe's train_pass over cfg.epochs, the member's state)."""
    from probe.heads.fit import _build_units
    from probe.heads.train import train_pass

    units = _build_units(setup, head, [view], None, False)[0]
    start = time.process_time()
    state, _ = train_pass(units, source, setup.train_rows, setup.val_rows, cfg, progress=False)
    return time.process_time() - start, state[0][0]


def _bare_cost(setup, head, view, cfg, source):
    """CPU seconds of cfg.epochs of forward, loss, backward and step on ready batches."""
    from torch.nn import functional as F

    from probe.heads.fit import _build_units
    from probe.heads.train import make_optimizer

    model = _build_units(setup, head, [view], None, False)[0][0].module.head
    rows, bs = setup.train_rows, cfg.batch_size
    x = torch.from_numpy(source.arrays[view][rows])
    y = torch.from_numpy(np.asarray(setup.train.labels, np.int64)[rows])
    batches = [(x[i:i + bs].clone(), y[i:i + bs].clone())
               for i in range(0, len(rows), bs) if len(rows[i:i + bs]) > 1]
    opt = make_optimizer([model], cfg)
    model.train()
    start = time.process_time()
    for _ in range(cfg.epochs):
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return time.process_time() - start


def epoch_costs(path):
    """Per head, CPU seconds per epoch of probe's loop and of the bare arithmetic, and the
    validation results of the selected epoch (to check that they did not change)."""
    from probe.heads.data import FeatureSource
    from probe.heads.setup import GB, Setup
    from probe.heads.train import TrainConfig

    torch.set_num_threads(1)
    out = {}
    with Setup(path, None, [DEMO_KEY], TrainConfig(device="cpu")) as setup:
        for head, epochs in EPOCHS_TIMED.items():
            view = setup.view(DEMO_KEY, head)
            cfg = copy.copy(setup.cfg.for_head(head, len(setup.train_rows)))
            cfg.epochs = cfg.patience = epochs  # validate every epoch, never stop
            source = FeatureSource(setup.train, [view], cfg.memory_limit_gb * GB, cfg.stream)
            args = (setup, head, view, cfg, source)
            _loop_cost(*args), _bare_cost(*args)  # warm up: first calls allocate, pick kernels
            (t_loop, s), t_bare = _loop_cost(*args), _bare_cost(*args)
            out[head] = dict(loop=t_loop / epochs, bare=t_bare / epochs,
                             val_top1=float(s["val_top1"]), val_loss=float(s["val_loss"]),
                             selected_epoch=s["selected_epoch"])
    return out


def bench_epochs(tmp, features, before, repeat):
    """Section 4: each tree (the current package, and ``before`` if given) measured in
    fresh processes, interleaved, ``repeat`` times; medians."""
    path = demo_features(tmp, features)
    trees = [("now", None)] + ([("before", os.path.abspath(before))] if before else [])
    print(f"\n## 4. One epoch of the neural heads: probe's loop vs the bare arithmetic "
          f"(demo features t{DEMO_KEY[0]}/{DEMO_KEY[1]}, CPU s per epoch on one thread, "
          f"median of {repeat} interleaved runs)\n")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runs = {name: [] for name, _ in trees}
    for _ in range(repeat):
        for name, tree in trees:
            env = dict(os.environ, OMP_NUM_THREADS="1")
            if tree:
                env["PYTHONPATH"] = tree
            res = subprocess.run([sys.executable, os.path.abspath(__file__), "--epoch-costs",
                                  path], env=env, check=True, capture_output=True, text=True)
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| head | code | probe's loop (s/epoch) | bare loop (s/epoch) | loop / bare | "
          "same validation results as now |")
    print("|---|---|---|---|---|---|")
    for head in EPOCHS_TIMED:
        for name, _ in trees:
            rs = [r[head] for r in runs[name]]
            same = all({k: r[k] for k in ("val_top1", "val_loss", "selected_epoch")}
                       == {k: runs["now"][0][head][k] for k in ("val_top1", "val_loss",
                                                               "selected_epoch")} for r in rs)
            print(f"| {head} | {name} | {np.median([r['loop'] for r in rs]):.4f} | "
                  f"{np.median([r['bare'] for r in rs]):.4f} | "
                  f"{np.median([r['loop'] / r['bare'] for r in rs]):.3f} | {same} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the heads are small; see RESULTS)")
    ap.add_argument("--workdir", help="keep files here (default: a temporary folder)")
    ap.add_argument("--only-epochs", action="store_true", help="section 4 only")
    ap.add_argument("--features", help="section 4: the demo's train features (default: extract)")
    ap.add_argument("--before", help="section 4: a folder holding an older `probe` package")
    ap.add_argument("--repeat", type=int, default=3, help="section 4: interleaved runs")
    ap.add_argument("--epoch-costs", help=argparse.SUPPRESS)  # a child process of section 4
    args = ap.parse_args()
    if args.epoch_costs:
        print(json.dumps(epoch_costs(args.epoch_costs)))
        return
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    n, dim, counts, epochs = (4000, 256, (1, 4, 16), 3) if args.quick else (20000, 768, (1, 4, 16, 32), 5)
    with tempfile.TemporaryDirectory() as t:
        tmp = args.workdir or t
        os.makedirs(tmp, exist_ok=True)
        if args.only_epochs:
            bench_epochs(tmp, args.features, args.before, args.repeat)
            return
        path = bench_grid(tmp, n, dim, counts, epochs)
        bench_stream(path, 16, epochs)
        if not args.skip_real:
            bench_real(tmp, *((1000, 500) if args.quick else (3000, 1000)))
        bench_epochs(tmp, args.features, args.before, args.repeat)


if __name__ == "__main__":
    main()
