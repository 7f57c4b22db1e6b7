"""probe's keypoint matching against a bare torch upsample + matmul + argmax, same maps.

The bare version is DIFT's arithmetic with nothing else: upsample both maps to the
original size in one piece, normalise, one (K x C) @ (C x HW) product, argmax.  probe's
``match_pair`` by default upsamples no channel (the dot products and norms of the
upsampled map are computed from the small map, see probe/correspondence/match.py);
``--literal`` upsamples the target map in channel chunks (bounded memory).  Both sample
the source vectors without upsampling the source map and convert to and from numpy.  All
run on the same maps, taking turns, several times; pairs/s are medians.

    python benchmarks/bench_correspond.py                      # SD-like: 640 ch, 48x48 -> 480x360
    python benchmarks/bench_correspond.py --channels 1280 --grid 24 --device cuda
"""
import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from probe.correspondence import MatchOptions, match_pair


def bare(src, trg, kps, size):
    w, h = size
    s = F.interpolate(src[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    t = F.interpolate(trg[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    v = F.normalize(s[:, kps[:, 1], kps[:, 0]].T, dim=1)
    cos = v @ F.normalize(t.reshape(t.shape[0], -1), dim=0)
    idx = cos.argmax(dim=1)
    return torch.stack([idx % w, idx // w], dim=1)


def timed(fn, pairs, sync):
    t0 = time.perf_counter()
    for p in pairs:
        fn(*p)
    sync()
    return len(pairs) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=640)
    ap.add_argument("--grid", type=int, default=48)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-mb", type=int, default=256)
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    size = (a.width, a.height)
    pairs = []
    for _ in range(a.pairs):
        s = torch.randn(a.channels, a.grid, a.grid, generator=g).to(dev)
        t = torch.randn(a.channels, a.grid, a.grid, generator=g).to(dev)
        k = torch.stack([torch.randint(0, a.width, (a.points,), generator=g),
                         torch.randint(0, a.height, (a.points,), generator=g)], dim=1)
        pairs.append((s, t, k))
    opts = MatchOptions(memory_mb=a.memory_mb)
    ours = [([s], [t], k.numpy(), size, size, opts) for s, t, k in pairs]
    lit = [([s], [t], k.numpy(), size, size, MatchOptions(literal=True, memory_mb=a.memory_mb))
           for s, t, k in pairs]
    base = [(s, t, k.to(dev), size) for s, t, k in pairs]
    with torch.no_grad():
        same = [float((torch.as_tensor(match_pair(*o)).long() == bare(*b).cpu()).all(1)
                      .float().mean()) for o, b in zip(ours[:2], base[:2])]
        timed(lambda *p: match_pair(*p), ours[:1], sync)  # warm-up
        timed(bare, base[:1], sync)
        r_probe, r_lit, r_bare = [], [], []
        for _ in range(a.repeats):
            r_probe.append(timed(lambda *p: match_pair(*p), ours, sync))
            r_lit.append(timed(lambda *p: match_pair(*p), lit, sync))
            r_bare.append(timed(bare, base, sync))
    mp, ml, mb = (statistics.median(r) for r in (r_probe, r_lit, r_bare))
    print(f"{platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}, device {dev}")
    print(f"maps {a.channels} x {a.grid} x {a.grid} -> {a.width} x {a.height}, "
          f"{a.points} points, {a.pairs} pairs x {a.repeats} repeats; same predictions as bare "
          f"(fraction, first pairs): {same}")
    print(f"probe match_pair:           {mp:.2f} pairs/s   runs {[round(x, 2) for x in r_probe]}")
    print(f"probe match_pair --literal: {ml:.2f} pairs/s   runs {[round(x, 2) for x in r_lit]}")
    print(f"bare torch:                 {mb:.2f} pairs/s   runs {[round(x, 2) for x in r_bare]}")
    print(f"probe / bare: {mp / mb:.2f}, literal / bare: {ml / mb:.2f} (goal >= 0.8)")
    full = a.channels * a.width * a.height * 4 / 2**20
    print(f"one upsampled map in one piece: {full:.0f} MiB; probe's chunk bound: {a.memory_mb} MiB")


if __name__ == "__main__":
    main()
