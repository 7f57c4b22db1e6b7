"""probe's CKA grid against torch-cka on the same features, timed in one run.

Both compute minibatch CKA with the unbiased HSIC over the same batches (file order, so
the numbers must agree).  torch-cka gets the features already in memory, fed through
nn.Identity layers; probe reads them from the HDF5 file inside the timing.

    python benchmarks/bench_cka.py            # 12 keys x 2048 samples, D=768, batches of 1024
    python benchmarks/bench_cka.py --n 1024 --dim 256   # a quicker look
"""
import argparse
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from probe.measures import cka
from probe.store import open_features, write_features


def make_file(path, n, dim, timesteps, blocks, seed=0):
    """Features that behave like a network's: blocks share a latent, noise grows with t;
    every other block is a spatial map (C, 4, 4) with C*16 = dim."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 64)).astype(np.float32)
    feats = {}
    for t in timesteps:
        h = z
        for i in range(blocks):
            h = np.tanh(h @ rng.standard_normal((h.shape[1], dim)).astype(np.float32) / 8)
            f = h + (t / 1000) * rng.standard_normal((n, dim)).astype(np.float32)
            feats[(t, f"block{i}")] = f.reshape(n, dim // 16, 4, 4) if i % 2 else f
    write_features(path, feats, labels=np.zeros(n, int))


class Layers(torch.nn.Module):
    """Splits the concatenated features back into one nn.Identity per key, so torch-cka's
    hooks (on 'layers.i') see exactly the stored features."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes = sizes
        self.layers = torch.nn.ModuleList(torch.nn.Identity() for _ in sizes)

    def forward(self, x):
        for layer, part in zip(self.layers, x.split(self.sizes, dim=1)):
            layer(part)


def run_torch_cka(path, batch_size):
    from torch_cka import CKA

    with open_features(path) as f:
        flat = [torch.from_numpy(f.load(k)).reshape(len(f), -1) for k in f.keys]
    loader = DataLoader(TensorDataset(torch.cat(flat, 1)), batch_size=batch_size)
    names = [f"layers.{i}" for i in range(len(flat))]
    sizes = [x.shape[1] for x in flat]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = CKA(Layers(sizes), Layers(sizes), "a", "b", names, names)
        start = time.perf_counter()
        c.compare(loader)
        elapsed = time.perf_counter() - start
    return elapsed, c.export()["CKA"].double().numpy()


def timed(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="samples")
    p.add_argument("--dim", type=int, default=768, help="features per sample (multiple of 16)")
    p.add_argument("--timesteps", default="10,250,500", help="comma-separated")
    p.add_argument("--blocks", type=int, default=4, help="blocks per timestep")
    p.add_argument("--minibatch", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3, help="probe runs (best is kept)")
    args = p.parse_args()
    timesteps = [int(t) for t in args.timesteps.split(",")]
    keys = len(timesteps) * args.blocks
    print(f"{keys} keys x {args.n} samples, D={args.dim}, minibatch {args.minibatch}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "features.h5")
        make_file(path, args.n, args.dim, timesteps, args.blocks)
        t_ref, ref = run_torch_cka(path, args.minibatch)
        t_probe, res = timed(lambda: cka(path, minibatch=args.minibatch, shuffle=False), args.repeat)
        t_shuf, _ = timed(lambda: cka(path, minibatch=args.minibatch), args.repeat)
        t_full, _ = timed(lambda: cka(path), args.repeat)
    diff = np.abs(res.matrix - ref).max()
    print(f"torch-cka CKA.compare          {t_ref:8.2f} s")
    print(f"probe.cka (same batches)       {t_probe:8.2f} s   ratio {t_ref / t_probe:6.1f}x   "
          f"max |diff| {diff:.1e}")
    print(f"probe.cka (shuffled batches)   {t_shuf:8.2f} s   ratio {t_ref / t_shuf:6.1f}x")
    print(f"probe.cka (full batch, biased) {t_full:8.2f} s   ratio {t_ref / t_full:6.1f}x")


if __name__ == "__main__":
    main()
