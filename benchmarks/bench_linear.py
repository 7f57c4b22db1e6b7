"""The linear probe's full-batch L-BFGS solver against scikit-learn's
LogisticRegression(lbfgs) on the same standardised features, side by side in one run.

    python benchmarks/bench_linear.py --workdir /tmp/bench-linear            # cases a, b, c
    python benchmarks/bench_linear.py --workdir /tmp/bench-linear --cases a  # a few seconds
    python benchmarks/bench_linear.py ... --sklearn-keys 4                   # c: 4 of the 24

Features (extracted into --workdir on the first run, then reused):
(a) the demo set: ldae-fmnist, t=10, blocks.1, mean-pooled (128 features), 2,000 train /
    1,000 test images (`probe extract --model ldae-fmnist --t 10 --blocks blocks.1`).
(b) the full official Fashion-MNIST split, 60,000 / 10,000 images, one key of 512 features:
    ldae-fmnist at t=10, blocks.1 with `--pool avg2`, the (128, 2, 2) map flattened.
(c) 24 such keys (t = 10, 50, 100, 200, 400, 700 x the 4 blocks): one `compare` call
    against 24 separate scikit-learn fits (timed on --sklearn-keys of them, evenly spread,
    and extrapolated; top-1 compared on those).

Both sides fit the same rows (train minus probe's validation split), standardised with
those rows' statistics as the linear head's BatchNorm does.  scikit-learn gets them in
memory as float32 and is timed on `fit` alone, with 1 BLAS thread and with 2.  probe is
timed by its `train_time_s`: reading the rows into the solver, the statistics, and the
whole l2 path with its validation scores.  probe runs with torch.set_num_threads(2), its
default solver (l2 chosen on the validation split) and also at scikit-learn's problem,
l2 = 1 / (n C).  scikit-learn runs at its default C = 1 (the `logreg` baseline), tol 1e-4.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from probe.heads.fit import split_options, train_heads
from probe.heads.setup import Setup, split_rows
from probe.store import open_features, write_features

TS = (10, 50, 100, 200, 400, 700)
BLOCKS = ("blocks.0", "blocks.1", "blocks.2", "blocks.3")
COMPATIBLE = ("model", "checkpoint_sha256", "weights_sha256", "add_noise", "ensemble", "data",
              "split", "noise_seed")


def extract(workdir, data, split, ts, blocks, pool, out):
    path = os.path.join(workdir, out)
    if not os.path.exists(path):
        cmd = [sys.executable, "-m", "probe", "extract", "--model", "ldae-fmnist", "--data", data,
               "--split", split, "--t", ",".join(map(str, ts)), "--blocks", ",".join(blocks),
               "--pool", pool, "--out", path, "--quiet"]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    return path


def flattened(src, out):
    """A copy of an avg2 feature file with every (C, 2, 2) map flattened to 4C features."""
    if os.path.exists(out):
        return out
    with open_features(src) as f:
        feats = {k: f.load(k).reshape(len(f), -1) for k in f.keys}
        attrs = {k: f.attrs[k] for k in COMPATIBLE if k in f.attrs}
        write_features(out, feats, labels=f.labels, ids=f.ids, class_names=f.class_names,
                       attrs={**attrs, "pool": "avg2, flattened"})
    return out


def sklearn_fit(z, y, threads, C=1.0):
    with threadpool_limits(threads):
        model = LogisticRegression(C=C, max_iter=5000)
        start = time.perf_counter()
        model.fit(z, y)
        return time.perf_counter() - start, model


def probe_fit(train, test, keys, **options):
    """The linear head on every key in one call, as `probe compare` runs it."""
    _, cfg = split_options(options)
    with Setup(train, test, keys, cfg) as setup:
        return [r.summary for r in train_heads(setup, "linear", keys, progress=False)]


def standardised(train, test, key):
    """probe's training rows and their standardisation, computed here with numpy."""
    with open_features(train) as f, open_features(test) as g:
        x, y, xt, yt = f.load(key), np.asarray(f.labels), g.load(key), np.asarray(g.labels)
    rows, _ = split_rows(y, 0.1, 0)
    mean, var = x[rows].astype(np.float64).mean(0), x[rows].astype(np.float64).var(0)
    scale = 1 / np.sqrt(var + 1e-6)
    z, zt = ((x[rows] - mean) * scale).astype(np.float32), ((xt - mean) * scale).astype(np.float32)
    return z, y[rows], zt, yt


def case(name, train, test, keys, sklearn_keys, memory_limit_gb):
    print(f"\n## ({name}) {len(keys)} key(s), load average {os.getloadavg()[0]:.1f} at start\n",
          flush=True)
    with open_features(train) as f:
        n_rows = len(split_rows(np.asarray(f.labels), 0.1, 0)[0])
    start = time.perf_counter()
    rows = probe_fit(train, test, keys, memory_limit_gb=memory_limit_gb)
    wall = time.perf_counter() - start
    fixed = probe_fit(train, test, keys, memory_limit_gb=memory_limit_gb, l2=1 / n_rows)
    solve, solve_fixed = rows[0]["train_time_s"], fixed[0]["train_time_s"]
    picked = np.linspace(0, len(keys) - 1, min(sklearn_keys, len(keys))).round().astype(int)
    sk = {1: [], 2: []}
    diffs, diffs_fixed = [], []
    for i in picked:
        z, y, zt, yt = standardised(train, test, keys[i])
        for threads in (1, 2):
            seconds, model = sklearn_fit(z, y, threads)
            sk[threads].append(seconds)
        top1 = model.score(zt, yt)
        diffs.append(100 * (rows[i]["top1"] - top1))
        diffs_fixed.append(100 * (fixed[i]["top1"] - top1))
        print(f"  t{keys[i][0]}/{keys[i][1]}: sklearn top-1 {100 * top1:.2f}, probe "
              f"{100 * rows[i]['top1']:.2f} (l2 chosen), {100 * fixed[i]['top1']:.2f} "
              f"(l2 = 1/n); sklearn {sk[1][-1]:.2f} s (1 thread), {sk[2][-1]:.2f} s (2), "
              f"{model.n_iter_[0]} iterations", flush=True)
    scale = len(keys) / len(picked)
    sk1, sk2 = scale * sum(sk[1]), scale * sum(sk[2])
    extrapolated = " (extrapolated)" if len(picked) < len(keys) else ""
    print("\n| | probe, l2 chosen | probe, l2 = 1/n | sklearn C=1, 1 thread | "
          "sklearn C=1, 2 threads |\n|---|---|---|---|---|")
    print(f"| time (s) | {solve:.2f} (call {wall:.1f}) | {solve_fixed:.2f} | "
          f"{sk1:.2f}{extrapolated} | {sk2:.2f}{extrapolated} |")
    print(f"| sklearn / probe | | | {sk1 / solve:.1f}x (same problem {sk1 / solve_fixed:.1f}x) | "
          f"{sk2 / solve:.1f}x (same problem {sk2 / solve_fixed:.1f}x) |")
    print(f"| top-1 probe - sklearn (points) | {_spread(diffs)} | {_spread(diffs_fixed)} | | |")
    print(f"\nprobe: chosen l2 {sorted({r['head_options']['l2'] for r in rows})[:6]}, "
          f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    if len(keys) == 1 and n_rows < 10_000:  # the recipe it replaces, for reference
        sgd = probe_fit(train, test, keys, memory_limit_gb=memory_limit_gb, solver="sgd")[0]
        print(f"probe --solver sgd (the previous default): {sgd['train_time_s']:.2f} s, "
              f"top-1 {100 * sgd['top1']:.2f}", flush=True)


def _spread(d):
    return f"{d[0]:+.2f}" if len(d) == 1 else f"mean {np.mean(d):+.2f}, max |{np.abs(d).max():.2f}|"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="bench-linear")
    p.add_argument("--cases", default="a,b,c")
    p.add_argument("--sklearn-keys", type=int, default=24,
                   help="case c: scikit-learn fits timed on this many of the 24 keys")
    p.add_argument("--memory-limit", type=float, default=8.0,
                   help="GB: case c holds 24 x 60,000 x 512 floats (2.9 GB) in memory")
    args = p.parse_args()
    torch.set_num_threads(2)
    os.makedirs(args.workdir, exist_ok=True)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} "
          f"cores, load average {os.getloadavg()[0]:.1f} at start")
    cases = args.cases.split(",")
    if "a" in cases:
        tr, te = (extract(args.workdir, "demo", s, [10], ["blocks.1"], "mean", f"demo-{s}.h5")
                  for s in ("train", "test"))
        case("a", tr, te, [(10, "blocks.1")], 1, args.memory_limit)
    if "b" in cases or "c" in cases:
        tr, te = (flattened(extract(args.workdir, "fashion-mnist", s, TS, BLOCKS, "avg2",
                                    f"fm-{s}-avg2.h5"),
                            os.path.join(args.workdir, f"fm-{s}-512.h5"))
                  for s in ("train", "test"))
        if "b" in cases:
            case("b", tr, te, [(10, "blocks.1")], 1, args.memory_limit)
        if "c" in cases:
            case("c", tr, te, [(t, b) for t in TS for b in BLOCKS], args.sklearn_keys,
                 args.memory_limit)


if __name__ == "__main__":
    main()
