"""Segmentation heads: one epoch of probe's loop against a bare loop of the same arithmetic,
and the peak memory of a head on the full Fashion-MNIST split.

    python benchmarks/bench_segment.py            # both parts
    python benchmarks/bench_segment.py --quick    # fewer images

1. One epoch, seg-linear and seg-mlp, on maps of ldae-fmnist's shape (128 x 4 x 4, masks
   28 x 28, 11 classes): probe's ``train_seg_head`` (batches sliced on the device from the
   features held there, masks sliced by row) against a bare loop of the same module's
   forward, loss, backward, AdamW step and scheduler step on batches cut beforehand.  CPU
   seconds of one thread (robust to a shared machine) of a process's second epoch (the
   first pays torch's one-off lazy imports), each in a fresh process, taking turns, the
   median of --repeat runs.  Goal: <= 1.2x.
2. Peak memory: a fresh process trains seg-linear for one epoch on 60,000 images (the
   full train split's size; features float16 (60000, 128, 4, 4), real fashion-mnist-seg
   masks when /usr/share/datasets/fashion-mnist exists), and reports its peak RSS against
   the features' and masks' own size, and against what the split's features upsampled to
   28 x 28 would take (never built).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

C, G, S, K = 128, 4, 28, 11


def make_file(path, n, seed=0, dtype=np.float32):
    from probe.store import write_features

    rng = np.random.default_rng(seed)
    masks = rng.integers(0, K, (n, S, S)).astype(np.uint8)
    try:
        from probe.data import load_dataset

        ds = load_dataset("fashion-mnist-seg", "train")
        masks = ds.load_masks(np.arange(n) % len(ds))
    except Exception:  # no local Fashion-MNIST: random masks cost the same
        pass
    feats = rng.standard_normal((n, C, G, G)).astype(dtype)
    write_features(path, {"t10/blocks.1": feats}, labels=np.zeros(n, int), masks=masks,
                   mask_class_names=[str(i) for i in range(K)], dtype=dtype)
    return path


def one_epoch(path, head, mode):
    """CPU seconds of one epoch (a fresh process runs this)."""
    import torch

    from probe.heads.dense.modules import build_seg_head
    from probe.heads.dense.train import SegConfig, masks_on, source, train_seg_head
    from probe.store import open_features

    torch.set_num_threads(1)
    cfg = SegConfig(epochs=1, val_fraction=0.0, bootstrap=0, device="cpu")
    with open_features(path) as f:
        key = f.keys[0]
        rows = np.arange(len(f))
        src, masks = source(f, [key], cfg), masks_on(f, "cpu")
        src.held([(key, "map")], torch.device("cpu"))  # loading is not the epoch
        if mode == "probe":
            t0 = time.process_time()
            train_seg_head(head, [f.shape(key)], [key], src, masks, rows, rows[:0], K, 255,
                           cfg, progress=False)
            return time.process_time() - t0
        x = torch.from_numpy(src.arrays[(key, "map")])
        torch.manual_seed(0)
        module, _ = build_seg_head(head, [f.shape(key)], K, S)
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        order = torch.from_numpy(np.random.default_rng(0).permutation(len(rows)))
        batches = [(x[order[i:i + 64]], masks[order[i:i + 64]].long())
                   for i in range(0, len(rows), 64)]
        t0 = time.process_time()
        module.train()
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(module([xb]), yb, ignore_index=255).backward()
            opt.step()
            sched.step()
        return time.process_time() - t0


def hwm_mib():
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from
    the parent that forked it)."""
    with open("/proc/self/status") as fh:
        line = next(l for l in fh if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def peak(path):
    """Peak RSS (MiB) of a fresh process training seg-linear one epoch on ``path``."""
    import probe
    import torch  # noqa: F401  (its own footprint is not the head's)

    before = hwm_mib()
    probe.fit(path, head="seg-linear", epochs=1, device="cpu", progress=False, bootstrap=100)
    return dict(before_mib=before, peak_mib=hwm_mib())


def child(args):
    if args.mode == "peak":
        out = peak(args.file)
    else:  # the first epoch in a process pays one-off costs (torch's lazy imports, kernels)
        one_epoch(args.file, args.head, args.mode)
        out = one_epoch(args.file, args.head, args.mode)
    print(json.dumps(out))


def run_child(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True,
                       text=True, env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", action="store_true")
    p.add_argument("--file")
    p.add_argument("--head")
    p.add_argument("--mode")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-epoch", action="store_true")
    args = p.parse_args()
    if args.child:
        return child(args)
    print(f"load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        n = 600 if args.quick else 2000
        path = make_file(os.path.join(tmp, "epoch.h5"), n)
        for head in () if args.skip_epoch else ("seg-linear", "seg-mlp"):
            times = {"probe": [], "bare": []}
            for _ in range(args.repeat):
                for mode in ("probe", "bare"):
                    times[mode].append(run_child("--file", path, "--head", head, "--mode", mode))
            pr, bare = np.median(times["probe"]), np.median(times["bare"])
            print(f"1. one epoch of {head} on {n} images: probe {pr:.2f} s, bare loop "
                  f"{bare:.2f} s (CPU s, median of {args.repeat}): {pr / bare:.2f}x")
        if args.skip_memory:
            return 0
        n = 6000 if args.quick else 60000
        path = make_file(os.path.join(tmp, "full.h5"), n, dtype=np.float16)
        m = run_child("--file", path, "--mode", "peak")
        feats32 = n * C * G * G * 4 / 2**20
        mask = n * S * S / 2**20
        full = n * C * S * S * 4 / 2**20
        print(f"2. seg-linear, one epoch on {n} images: peak RSS {m['peak_mib']:.0f} MiB "
              f"({m['before_mib']:.0f} MiB after imports); features in float32 "
              f"{feats32:.0f} MiB + masks {mask:.0f} MiB; upsampled to {S}x{S} they "
              f"would be {full / 1024:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
