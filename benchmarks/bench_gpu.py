"""The GPU path, measured side by side in one run, and checked before it is trusted.

    python benchmarks/bench_gpu.py                      # CUDA: dit-xl-2, adm-256-uncond, sd-1.5
    python benchmarks/bench_gpu.py --device cpu --quick # the script itself, on fmnist models

For each model and precision (fp32, bf16, fp16) at batch 64:
1. check:   features of a few images on the device against fp32 features of the same images
            on the CPU, per block (relative error to the block's max magnitude; tolerances
            below).  A failed check is printed and the script exits 1 at the end.
2. loader:  images/s of the pipeline's DataLoader alone (decode, resize, collate, pinned copy
            to the device; ``--num-workers auto``).
3. extract: images/s of ``probe.extract`` end to end (all blocks, one t, mean pool, HDF5),
            against 4. bare: images/s of ``prepare`` + noising + the full forward on images
            already on the device, under the same autocast.  ratio = extract / bare.
5. compile (``--compile``): the first batch under ``torch.compile`` against later ones and
            against eager batches: the warm-up cost and the batches it takes to pay it back.

Random init where no weights are present (all three large models here), with the weights
that the original code initialises to zero (DiT's adaLN-zero, ADM's zero_module outputs)
redrawn at std 0.02: zero branches make blocks identities, which would make both the timing
of a real checkpoint's arithmetic and the check too easy.  SD runs with torch_dtype=float32,
so that --precision alone sets the arithmetic.

Not yet run on a GPU (no GPU was lent to the session that wrote it): see RESULTS.md.
"""
import argparse
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

import probe
from probe.data import load_dataset
from probe.device import resolve_device
from probe.pipeline.gpu import _innermost, loader_options, resolve_num_workers, use_channels_last
from probe.pipeline.loop import _collate, _Indexed, features
from probe.precision import autocast, keep_fp32

FULL = {"dit-xl-2": dict(random_init=True, vae="random"),
        "adm-256-uncond": dict(random_init=True),
        "sd-1.5": dict(random_init=True, torch_dtype="float32")}
QUICK = {"dit-fmnist": {}, "adm-fmnist": {}}
# Check tolerances, relative to a block's largest |value| (pooled features).  fp32 on CUDA:
# cuDNN convolutions may use TF32 (10-bit mantissa, eps 2^-11 ~ 4.9e-4) and kernels sum in
# another order; a few roundings in series stay under 5e-3.  bf16 (eps 2^-8 ~ 3.9e-3): 2e-2,
# as tests/pipeline/test_precision.py.  fp16 (eps 2^-11) keeps 3 more bits than bf16: 1e-2.
TOL = {"fp32": 5e-3, "bf16": 2e-2, "fp16": 1e-2}
T = 100


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load(name, kwargs, device):
    torch.manual_seed(0)
    model = probe.load_model(name, device="cpu", **kwargs)
    if kwargs.get("random_init"):
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.net.parameters():
                if p.dim() >= 2 and not p.any():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def settings_for(model, precision):
    return dict(blocks=model.block_names, timesteps=[T] if model.has_timesteps else [],
                ensemble=1, add_noise=True, noise_seed=0, pool="mean", class_label=None,
                precision=precision)


def batch_features(model, images, ids, precision, channels_last=False):
    with torch.inference_mode():
        return features(model, images, ids, None, settings_for(model, precision), False,
                        channels_last)


def check(name, model, data, device, precisions, n):
    """Device features vs CPU fp32 features of the same n images; returns failures."""
    images = torch.stack([data[i][0] for i in range(n)])
    ids = [data.ids[i] for i in range(n)]
    ref = batch_features(model.to("cpu"), images, ids, "fp32")
    model.to(device)
    cl = use_channels_last(model, device)
    failed = []
    for p in precisions:
        got = batch_features(model, images.to(device), ids, p, cl)
        worst = max((float((got[k].cpu() - v).abs().max() / v.abs().max()), k)
                    for k, v in ref.items())
        ok = worst[0] <= TOL[p]
        print(f"  check {p}: worst block {worst[1]}: rel err {worst[0]:.2e} "
              f"(tol {TOL[p]:.0e}) {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            failed.append(f"{name} {p} {worst[1]} {worst[0]:.2e}")
    return failed


def loader_rate(data, n, batch, device):
    workers = resolve_num_workers("auto", device)
    loader = torch.utils.data.DataLoader(
        _Indexed(data), batch_sampler=[list(range(s, min(s + batch, n)))
                                       for s in range(0, n, batch)],
        collate_fn=_collate, **loader_options(workers, device))
    t0 = time.perf_counter()
    for b in loader:
        b["images"].to(device, non_blocking=True)
    sync(device)
    return n / (time.perf_counter() - t0), workers


def extract_rate(model, data, n, batch, precision, device, out):
    kw = dict(t=[T] if model.has_timesteps else None, blocks="all", out=out, batch_size=batch,
              precision=precision, device=device, overwrite=True, progress=False,
              log=lambda *a: None)
    probe.extract(model, data, limit=batch, **kw)  # warm-up: cuDNN plans, allocator
    t0 = time.perf_counter()
    probe.extract(model, data, limit=n, **kw)
    return n / (time.perf_counter() - t0)


def bare_rate(model, data, n, batch, precision, device, channels_last):
    images = torch.stack([data[i % len(data)][0] for i in range(batch)]).to(device)
    t = torch.full((batch,), T, device=device) if model.has_timesteps else None

    def step():
        x = model.prepare(images)
        if t is not None:
            x = model.q_sample(x, t, torch.randn_like(x))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            model(x, t)

    with torch.inference_mode():
        step()
        sync(device)
        steps = math.ceil(n / batch)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
    return steps * batch / (time.perf_counter() - t0)


def compile_warmup(model, data, batch, batches, precision, device, channels_last):
    """Seconds per batch: eager (median), the first compiled batch, compiled (median).
    Eager and compiled batches take turns, so that a change of load hits both alike."""
    images = torch.stack([data[i % len(data)][0] for i in range(batch)]).to(device)
    ids = [data.ids[i % len(data)] for i in range(batch)]
    blocks = _innermost(model._block_modules())
    fast = [torch.compile(m.forward, dynamic=False) for m in blocks]

    def timed(compiled_forwards):
        for m, f in zip(blocks, compiled_forwards or [None] * len(blocks)):
            if f is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = f
        t0 = time.perf_counter()
        batch_features(model, images, ids, precision, channels_last)
        sync(device)
        return time.perf_counter() - t0

    eager, comp = [], []
    for _ in range(batches):
        eager.append(timed(None))
        comp.append(timed(fast))
    timed(None)
    return float(np.median(eager[1:])), comp[0], float(np.median(comp[1:]))


def run_model(name, kwargs, args, device, rows, failures):
    print(f"\n{name}", flush=True)
    model = load(name, kwargs, torch.device("cpu"))
    for m in model.fp32_modules().values():
        keep_fp32(m)
    data = load_dataset(args.data, args.split, model.data_size, model.image_channels,
                        model.data_interpolation)
    n = min(args.images, len(data))
    failures += check(name, model, data, device, args.precisions, args.check_images)
    cl = use_channels_last(model, device)
    rate, workers = loader_rate(data, n, args.batch_size, device)
    print(f"  loader alone: {rate:.1f} img/s ({workers} workers)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.precisions:
            try:
                ex = extract_rate(model, data, n, args.batch_size, p, device,
                                  os.path.join(tmp, f"{p}.h5"))
                bare = bare_rate(model, data, n, args.batch_size, p, device, cl)
            except torch.cuda.OutOfMemoryError:
                print(f"  {p}: out of memory at batch {args.batch_size}", flush=True)
                rows.append((name, p, "OOM", "OOM", "-", f"{rate:.0f}"))
                torch.cuda.empty_cache()
                continue
            print(f"  {p}: extract {ex:.1f} img/s, bare forward {bare:.1f} img/s, "
                  f"ratio {ex / bare:.2f}", flush=True)
            rows.append((name, p, f"{ex:.1f}", f"{bare:.1f}", f"{ex / bare:.2f}", f"{rate:.0f}"))
    if args.compile and name in args.compile_models:
        e, first, later = compile_warmup(model, data, args.batch_size, args.compile_batches,
                                         args.precisions[0], device, cl)
        gain = (f"pays back after {(first - later) / (e - later):.0f} batches" if later < e
                else "never pays back: not faster than eager")
        print(f"  compile ({args.precisions[0]}): eager {e:.3f} s/batch; compiled: first batch "
              f"{first:.1f} s, later {later:.3f} s/batch ({e / later:.2f}x eager's speed); "
              f"{gain}",
              flush=True)
    del model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="fmnist models, a few small batches")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--images", type=int, help="images per timing (default 512, quick 32)")
    ap.add_argument("--check-images", type=int, default=4)
    ap.add_argument("--data", default="demo", help="dataset spec; demo's 28 px images cost "
                    "little to decode, imagefolder:ROOT of JPEGs measures a real loader")
    ap.add_argument("--split", default="train")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--models", help="comma list (default: the three large ones, or quick's)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile warm-up")
    ap.add_argument("--compile-models", default="dit-xl-2,dit-fmnist")
    ap.add_argument("--compile-batches", type=int, default=6)
    args = ap.parse_args()
    device = resolve_device(args.device)
    args.batch_size = args.batch_size or (8 if args.quick else 64)
    args.images = args.images or (32 if args.quick else 512)
    args.precisions = args.precisions.split(",")
    args.compile_models = args.compile_models.split(",")
    zoo = QUICK if args.quick else FULL
    names = args.models.split(",") if args.models else list(zoo)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device: {device} ({card or platform.machine()}), torch {torch.__version__}, "
          f"batch {args.batch_size}, {args.images} images of {args.data}, t={T}, all blocks, "
          "mean pool")
    rows, failures = [], []
    for name in names:
        run_model(name, {**FULL, **QUICK}.get(name, {}), args, device, rows, failures)
    print(f"\n| model | precision | extract img/s | bare forward img/s | ratio | loader img/s |"
          f"\n|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if failures:
        print("\nCHECK FAILED (do not record these numbers): " + "; ".join(failures))
        sys.exit(1)
    print(f"\nchecks passed: {device} features agree with the CPU's fp32 ones within {TOL}")


if __name__ == "__main__":
    main()
