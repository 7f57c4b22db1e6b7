"""Image loading at ImageNet scale (issue 21): images/s of probe's `imagefolder` loading vs a
bare PIL decode-and-resize loop on the same files, at 0, 1 and 2 workers, side by side.

    python benchmarks/bench_loader.py [--quick] [--sizes 224,256] [--repeat 3] [--before DIR]
                                      [--uint8] [--draft-sizes 64,128,224]

The files: the 20 bundled photos (tests/fixtures/imagenet_photos, 256 px), each cropped
and flipped into ``--per-photo`` variants and re-encoded at ImageNet's typical size,
500x375 (one in four 375x500), JPEG quality 90, into a temporary class-folder tree.  A
256-px photo blown up to 500 px compresses to ~45 KB, and decoding time grows with the
bytes, so grain is added until the files weigh what ImageNet's do (~110 KB).

- bare loop, N workers: N forked processes each run PIL open, convert RGB, resize the
  shorter side to S (PIL bicubic), centre crop, to a float tensor, on its share of the
  files; nothing is sent back.  N = 0 is the loop in this process.  The floor.
- probe, N workers: ``load_dataset("imagefolder:DIR", image_size=S, channels=3)`` read
  through the DataLoader extraction uses (``probe.extraction.loop._Indexed`` and
  ``_collate``, batches of 32, ``num_workers=N``), the images arriving in this process.

Each tree (this one, and ``--before DIR``: a folder holding an older `probe` package) is
measured in a fresh process; bare and probe take turns within it, and the trees take
turns ``--repeat`` times; medians.  torch runs one thread in every process (a worker's
share).  Goal: probe / bare >= 0.9 at every N, and images/s growing with N.

``--uint8`` also measures a candidate transform that resizes the uint8 pixels (faster,
other values; not probe's).  Then, in CPU time: probe's transform after a full decode vs
after PIL's JPEG draft decode (1/2, 1/4, 1/8 scale) with the values' difference, and
PIL vs torchvision.io.decode_jpeg as decoders.
"""
import argparse
import glob
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PHOTOS = os.path.join(HERE, "..", "tests", "fixtures", "imagenet_photos")
WORKERS = (0, 1, 2)
BATCH = 32


def make_photos(out, per_photo, seed=0):
    """``per_photo`` variants of each bundled photo as ROOT/CLASS/*.JPEG; mean KB."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    sizes = []
    for path in sorted(glob.glob(os.path.join(PHOTOS, "*", "*.jpg"))):
        cls = os.path.basename(os.path.dirname(path))
        os.makedirs(os.path.join(out, cls), exist_ok=True)
        photo = Image.open(path).convert("RGB")
        side = min(photo.size)
        for k in range(per_photo):
            w, h = (375, 500) if k % 4 == 3 else (500, 375)
            scale = side / max(w, h) * rng.uniform(0.6, 1.0)  # a random crop of that shape
            cw, ch = w * scale, h * scale
            x0, y0 = rng.uniform(0, photo.size[0] - cw), rng.uniform(0, photo.size[1] - ch)
            im = photo.resize((w, h), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
            im = im.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=0))
            if k % 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            im = Image.fromarray(add_grain(np.asarray(im, np.float32), rng, 16.0))
            stem = os.path.splitext(os.path.basename(path))[0]  # a class may hold two photos
            dst = os.path.join(out, cls, f"{stem}_{k:03d}.JPEG")
            im.save(dst, quality=90)
            sizes.append(os.path.getsize(dst))
    return len(sizes), float(np.mean(sizes)) / 1e3


def add_grain(a, rng, std):
    """Luminance grain at one and two pixels, a little colour noise: uint8 (H, W, 3)."""
    h, w = a.shape[:2]
    coarse = rng.normal(0, std, (h // 2 + 1, w // 2 + 1, 1)).repeat(2, 0).repeat(2, 1)[:h, :w]
    a = a + coarse + rng.normal(0, std, (h, w, 1)) + rng.normal(0, std / 3, (h, w, 3))
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


# ---- the bare loop ------------------------------------------------------------------------
def bare_load(path, size):
    """What loading must do at least: decode, resize the shorter side, centre crop, float."""
    import torch
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    a = np.array(im.crop((left, top, left + size, top + size)))
    return torch.from_numpy(a).permute(2, 0, 1).float().div_(255)


def bare_share(args):
    paths, size = args
    import torch

    torch.set_num_threads(1)
    for p in paths:
        bare_load(p, size)
    return len(paths)


def bare_rate(paths, size, workers):
    clock = Clock()
    if workers == 0:
        n = bare_share((paths, size))
    else:  # forked each time, as the DataLoader forks its workers each epoch
        pool = multiprocessing.get_context("fork").Pool(workers)
        n = sum(pool.map(bare_share, [(paths[k::workers], size) for k in range(workers)]))
        pool.close()
        pool.join()  # reaped, so that their CPU time counts
    return clock.rates(n)


class Clock:
    """Wall time, and CPU time of this process and its reaped children (the workers)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu():
        import resource

        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                      resource.getrusage(resource.RUSAGE_CHILDREN)))

    def rates(self, n):
        """(images per wall second, CPU ms per image over all processes)."""
        return n / (time.perf_counter() - self.wall), (self._cpu() - self.cpu) / n * 1e3


# ---- probe's loader ---------------------------------------------------------------------
def probe_rate(ds, workers):
    import torch

    try:  # issue 22 moves the extraction package
        from probe.pipeline.loop import _collate, _Indexed
    except ImportError:
        from probe.extraction.loop import _collate, _Indexed

    batches = [list(range(i, min(i + BATCH, len(ds)))) for i in range(0, len(ds), BATCH)]
    clock = Clock()
    loader = torch.utils.data.DataLoader(_Indexed(ds), batch_sampler=batches,
                                         num_workers=workers, collate_fn=_collate)
    n = sum(len(b["index"]) for b in loader)
    del loader  # its workers exit and are reaped with it
    return clock.rates(n)


def uint8_transform(size):
    """A candidate, not probe's transform: resize and crop the decoded uint8 pixels (torch's
    uint8 kernel, PIL's arithmetic to a level or two), then scale to [0, 1]."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    mode = TF.InterpolationMode.BICUBIC

    def transform(im):
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1)
        x = TF.center_crop(TF.resize(x, [size], interpolation=mode, antialias=True), [size])
        return x.float().div_(255)
    return transform


def measure(root, sizes, candidate):
    """In this process (the tree on sys.path): {size: {workers: {bare, probe[, uint8]:
    (img/s, CPU ms/img)}}}, taking turns; a hash of the first images' values; and how far
    the uint8 candidate's values are from probe's (mean, max, in 1/255)."""
    import copy
    import hashlib

    import torch

    from probe.data import load_dataset

    torch.set_num_threads(1)
    out, digest, diffs = {}, hashlib.sha1(), {}
    for size in sizes:
        ds = load_dataset(f"imagefolder:{root}", "train", size, 3, "bicubic")
        first = torch.stack([ds[i][0] for i in range(4)]).contiguous()
        digest.update(first.numpy().tobytes())
        loaders = {"bare": lambda w: bare_rate(ds.paths, size, w), "probe": lambda w: probe_rate(ds, w)}
        if candidate:
            u8 = copy.copy(ds)
            u8.transform = uint8_transform(size)
            loaders["uint8"] = lambda w: probe_rate(u8, w)
            d = torch.cat([(u8[i][0] - ds[i][0]).abs().flatten() for i in range(0, len(ds), 8)])
            diffs[size] = (float(d.mean()) * 255, float(d.max()) * 255)
        bare_rate(ds.paths[:BATCH], size, 0), probe_rate(ds, 0)  # warm up: page cache, imports
        out[size] = {w: {k: fn(w) for k, fn in loaders.items()} for w in WORKERS}
    return out, digest.hexdigest(), diffs


# ---- JPEG draft mode -----------------------------------------------------------------------
def decode(path, size=None):
    """RGB PIL image; with ``size``, JPEGs decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
    scaled IDCT) as far as the shorter side stays >= size (PIL's ``draft``)."""
    from PIL import Image

    im = Image.open(path)
    if size:
        w, h = im.size
        im.draft("RGB", (-(-w * size // min(w, h)), -(-h * size // min(w, h))))
    return im.convert("RGB")


def draft_check(root, sizes, rounds=3):
    """{size: (decode scales used, CPU ms/img full, CPU ms/img draft, |diff| mean, p99,
    max in 1/255)}: probe's transform on the full decode vs on the draft decode."""
    import torch

    from probe.data import load_dataset

    torch.set_num_threads(1)
    out = {}
    for size in sizes:
        ds = load_dataset(f"imagefolder:{root}", "train", size, 3, "bicubic")
        paths = ds.paths[::4]
        scales = sorted({round(_width(p) / decode(p, size).size[0]) for p in paths})
        costs = {"full": [], "draft": []}
        for _ in range(rounds):
            for name, arg in (("full", None), ("draft", size)):
                t0 = time.process_time()
                for p in paths:
                    ds.transform(decode(p, arg))
                costs[name].append((time.process_time() - t0) / len(paths) * 1e3)
        d = np.concatenate([(ds.transform(decode(p, size)) - ds.transform(decode(p))).abs()
                            .numpy().ravel() for p in paths]) * 255
        out[size] = (scales, statistics.median(costs["full"]), statistics.median(costs["draft"]),
                     float(d.mean()), float(np.percentile(d, 99)), float(d.max()))
    return out


def decoder_check(root, rounds=3):
    """PIL vs torchvision.io.decode_jpeg on the files: CPU ms/img of the decode to a
    (C, H, W) uint8 tensor (median of ``rounds`` passes), and whether the pixels agree."""
    import warnings

    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    warnings.simplefilter("ignore", DeprecationWarning)  # said once, in the report

    torch.set_num_threads(1)
    paths = sorted(glob.glob(os.path.join(root, "*", "*.JPEG")))[::4]

    def pil(p):  # as probe reads a file
        im = Image.open(p)
        im.load()
        return torch.from_numpy(np.array(im)).permute(2, 0, 1)

    def tv(p):
        return decode_jpeg(read_file(p), mode=ImageReadMode.RGB)

    costs = {"pil": [], "torchvision": []}
    for _ in range(rounds):
        for name, fn in (("pil", pil), ("torchvision", tv)):
            t0 = time.process_time()
            for p in paths:
                fn(p)
            costs[name].append((time.process_time() - t0) / len(paths) * 1e3)
    same = all(torch.equal(pil(p), tv(p)) for p in paths)
    return {k: statistics.median(v) for k, v in costs.items()}, same


def _width(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0]


def child(tree, *args):
    """Run this script with ``args`` in a fresh process importing `probe` from ``tree``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=tree)
    res = subprocess.run([sys.executable, os.path.abspath(__file__), *args],
                         env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(args[:2])} with {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_tree(tree, root, sizes, candidate):
    out, digest, diffs = child(tree, "--measure", root, "--sizes", ",".join(map(str, sizes)),
                               *(["--uint8"] if candidate else []))
    return {int(s): {int(w): r for w, r in v.items()} for s, v in out.items()}, digest, diffs


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import PIL

    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, Pillow {PIL.__version__}, "
            f"Python {platform.python_version()}")


def report(results, sizes):
    """One row per (S, workers, loader): img/s and CPU ms/img, each vs the bare loop of the
    same run, and vs the same loader at 0 workers; medians over the turns."""
    med = statistics.median
    print("| S | workers | loader | img/s | CPU ms/img | img/s / bare | CPU ms / bare | img/s / 0 workers |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for w in WORKERS:
            for tree, runs in results.items():
                for kind in runs[0][size][w]:
                    if kind == "bare" and tree != "now":
                        continue  # the same loop in every tree
                    rows = [(r[size][w][kind], r[size][w]["bare"], r[size][0][kind]) for r in runs]
                    name = "bare loop" if kind == "bare" else f"{kind} ({tree})"
                    print(f"| {size} | {w} | {name} | {med(x[0] for x, _, _ in rows):.0f} "
                          f"| {med(x[1] for x, _, _ in rows):.2f} "
                          f"| **{med(x[0] / b[0] for x, b, _ in rows):.2f}** "
                          f"| {med(x[1] / b[1] for x, b, _ in rows):.2f} "
                          f"| {med(x[0] / z[0] for x, _, z in rows):.2f}x |")


def report_draft(drafts):
    print("\nJPEG draft mode (not used by probe): probe's transform after a full decode vs after "
          "PIL's draft decode, CPU ms/img (median of 3 passes) and the values' difference in 1/255\n")
    print("| S | draft scale | full decode | draft decode | draft / full | mean diff | p99 | max |")
    print("|---|---|---|---|---|---|---|---|")
    for size, (scales, full, dr, mean, p99, mx) in drafts.items():
        print(f"| {size} | {', '.join(f'1/{k}' for k in scales)} | {full:.2f} | {dr:.2f} | "
              f"{dr / full:.2f} | {mean:.2f} | {p99:.2f} | {mx:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="120 files, S = 256, 2 turns, draft check at 64 and 256")
    ap.add_argument("--sizes", help="target sides S (default 224,256)")
    ap.add_argument("--per-photo", type=int, help="variants per bundled photo (default 24)")
    ap.add_argument("--repeat", type=int, help="turns of the trees (default 3)")
    ap.add_argument("--before", help="a folder holding an older `probe` package, measured too")
    ap.add_argument("--uint8", action="store_true",
                    help="also measure a candidate transform that resizes uint8 pixels")
    ap.add_argument("--draft-sizes", help="S for the draft-mode check (default 64,128,224)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # a child: measure the files in ROOT
    ap.add_argument("--draft", help=argparse.SUPPRESS)  # a child: the draft check on ROOT
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("256" if args.quick else "224,256")).split(",")]
    repeat = args.repeat or (2 if args.quick else 3)
    draft_sizes = [int(s) for s in (args.draft_sizes or ("64,256" if args.quick else "64,128,224")).split(",")]
    if args.measure:
        print(json.dumps(measure(args.measure, sizes, args.uint8)))
        return
    if args.draft:
        print(json.dumps((draft_check(args.draft, draft_sizes), decoder_check(args.draft))))
        return
    trees = {"now": os.path.abspath(os.path.join(HERE, ".."))}
    if args.before:
        trees["before"] = os.path.abspath(args.before)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as root:
        n, kb = make_photos(root, args.per_photo or (6 if args.quick else 24))
        print(f"{n} JPEGs (500x375 and 375x500, quality 90), {kb:.0f} KB on average")
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        results, digests = {name: [] for name in trees}, {name: set() for name in trees}
        for turn in range(repeat):
            for name, tree in trees.items():
                print(f"turn {turn + 1}/{repeat}: {name}", file=sys.stderr, flush=True)
                res, digest, diff = run_tree(tree, root, sizes, args.uint8 and name == "now")
                results[name].append(res)
                digests[name].add(digest)
                diffs = diff if name == "now" else diffs
        print(f"load average after the loaders: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        drafts, decoders = child(trees["now"], "--draft", root, "--draft-sizes",
                                 ",".join(map(str, draft_sizes)))
    print(f"\nmedian of {repeat} turns; img/s from wall time, a fresh DataLoader (or pool) per "
          "epoch; CPU ms/img over every process\n")
    report(results, sizes)
    for size, (mean, mx) in diffs.items():
        print(f"\nuint8 candidate, S={size}: values differ from probe's by {mean:.2f}/255 on "
              f"average, {mx:.1f}/255 at most")
    if args.before:
        print(f"\nsame values as before (first images, every S): {digests['now'] == digests['before']}")
    report_draft(drafts)
    (costs, same) = decoders
    print(f"\ndecoding to a uint8 tensor, CPU ms/img (median of 3 passes): PIL {costs['pil']:.2f}, "
          f"torchvision.io.decode_jpeg {costs['torchvision']:.2f} (deprecated since torchvision "
          f"0.29, not used); identical pixels: {same}")


if __name__ == "__main__":
    main()
