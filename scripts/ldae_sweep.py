"""The l-DAE ablation sweep: latent dimension d, pixel noise, and random init.

Trains one l-DAE per setting with `probe train ldae` (same architecture, schedule,
data and seed; only the noise space / d differ), then runs the paper's probe
protocol: clean input conditioned on a small t, encoder output, global average
pool, a linear classifier (here: standardisation = BatchNorm without affine, then
logistic regression) fitted on train-split features and scored on the test split.

    python scripts/ldae_sweep.py --out runs/ldae-sweep --latent-dims 2,4,8,16 --steps 1200

Runs already finished in --out are reused (and an interrupted one resumed), so the
sweep can be extended or rerun cheaply.  Results go to OUT/results.json and are
printed as a Markdown table.  Not part of CI: each setting trains for minutes to hours.
"""
import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import probe
from probe.cli import main as probe_main
from probe.data import load_dataset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ldae-sweep")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--patch-size", type=int, default=7)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=2)
    p.add_argument("--latent-dims", default="2,4,8,16", help="comma-separated d values")
    p.add_argument("--no-pixel", action="store_true", help="skip the pixel-noise DAE")
    p.add_argument("--no-random", action="store_true", help="skip the random-init baseline")
    p.add_argument("--no-pixels-baseline", action="store_true",
                   help="skip logistic regression on raw pixels (slow: 784-dim)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", default="", help="more `probe train ldae` flags for every run, "
                                               "e.g. \"--sigma-max 4\"")
    p.add_argument("--probe-t", type=int, default=10, help="timestep the probe conditions on")
    p.add_argument("--probe-train", type=int, default=10000, help="train images for the probe")
    p.add_argument("--probe-test", type=int, default=10000, help="test images for the probe")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def train_command(args, name, variant):
    cmd = ["train", "ldae", "--data", args.data, "--image-size", str(args.image_size),
           "--channels", str(args.channels),
           "--patch-size", str(args.patch_size), "--hidden-size", str(args.hidden_size),
           "--depth", str(args.depth), "--num-heads", str(args.num_heads),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--device", args.device,
           "--save-every", "100", "--quiet", "--out", os.path.join(args.out, name)]
    cmd += variant + shlex.split(args.extra)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def ensure_trained(cmd, steps):
    """Train (or resume, or reuse) the run; returns its log."""
    out = cmd[cmd.index("--out") + 1]
    log_path = os.path.join(out, "log.json")
    resume = os.path.exists(os.path.join(out, "train_state.pt"))
    if resume and json.load(open(log_path)).get("step") == steps:
        return json.load(open(log_path))
    rc = probe_main(cmd + ["--steps", str(steps)] + (["--resume"] if resume else []))
    if rc:
        sys.exit(f"training failed: probe {' '.join(cmd)}")
    return json.load(open(log_path))


def image_tensor(args, split, limit):
    ds = load_dataset(args.data, split, args.image_size, args.channels)
    n = min(limit, len(ds))
    # A fixed, class-mixed subset: the first n of a seeded permutation.
    idx = np.random.default_rng(0).permutation(len(ds))[:n]
    return torch.stack([ds[int(i)][0] for i in idx]), torch.as_tensor(ds.labels[idx])


@torch.no_grad()
def features(model, images, t, projected=True, batch=256):
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(next(model.parameters()).device)
        x = model.prepare(x) if projected else model.to_pixels(x)
        block = model.encoder_output
        out.append(model.forward_intermediates(x, t, [block])[block].mean(dim=1).cpu())
    return torch.cat(out).numpy()


def linear_probe(train_x, train_y, test_x, test_y):
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def evaluate(args, run_dir, name, d, D, steps, log, cmd, train_x, train_y, test_x, test_y):
    start = time.time()
    model = probe.load_model("ldae", checkpoint=os.path.join(run_dir, "model.pt"),
                             device=args.device)
    row = dict(setting=name, d=d, D=D, steps=steps, final_loss=log.get("final_loss"),
               train_wall_s=round(log.get("wall_time_s", 0.0), 1),
               command="probe " + " ".join(cmd + ["--steps", str(steps)]))
    for projected in (True, False):
        if model.net.tokenizer is None and not projected:
            continue
        key = "acc_projected" if projected else "acc_raw"
        row[key] = linear_probe(features(model, train_x, args.probe_t, projected), train_y,
                                features(model, test_x, args.probe_t, projected), test_y)
    if model.net.tokenizer is None:
        row["acc_raw"] = row["acc_projected"]  # pixel noise: no projection
    row["eval_s"] = round(time.time() - start, 1)
    return row


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits  # scikit-learn's BLAS threads too

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    os.makedirs(args.out, exist_ok=True)
    D = args.channels * args.patch_size ** 2
    settings = [(f"latent-d{d}", ["--noise", "latent", "--latent-dim", str(d)], args.steps, d)
                for d in map(int, args.latent_dims.split(","))]
    if not args.no_pixel:
        settings.append(("pixel", ["--noise", "pixel"], args.steps, None))
    if not args.no_random:
        first = settings[0][1]
        settings.append(("random-init", first, 0, settings[0][3]))

    train_x, train_y = image_tensor(args, "train", args.probe_train)
    test_x, test_y = image_tensor(args, "test", args.probe_test)
    pixels = None
    if not args.no_pixels_baseline:
        pixels = linear_probe(train_x.flatten(1).numpy(), train_y, test_x.flatten(1).numpy(),
                              test_y)
        print(f"raw pixels, logistic regression: {pixels:.4f}", flush=True)

    results = []
    for name, variant, steps, d in settings:
        cmd = train_command(args, name, variant)
        log = ensure_trained(cmd, steps)
        run_dir = os.path.join(args.out, name)
        key = dict(run=log["run_config"], step=log["step"], probe_t=args.probe_t,
                   probe_train=args.probe_train,
                   probe_test=args.probe_test, data=args.data, image_size=args.image_size)
        cached = os.path.join(run_dir, "probe_result.json")
        if os.path.exists(cached) and json.load(open(cached))["key"] == key:
            row = json.load(open(cached))["row"]  # this checkpoint was probed already
        else:
            row = evaluate(args, run_dir, name, d, D, steps, log, cmd, train_x, train_y,
                           test_x, test_y)
            with open(cached, "w") as fh:
                json.dump({"key": key, "row": row}, fh, indent=1)
        results.append(row)
        print(json.dumps(row), flush=True)
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump({"raw_pixels": pixels, "args": vars(args), "results": results}, fh,
                      indent=1)

    print(f"\n| setting | d / D | steps | final loss | probe acc (clean, projected) "
          f"| probe acc (clean, raw) |\n|---|---|---|---|---|---|")
    for r in results:
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        dd = f"{r['d']} / {D}" if r["d"] else f"pixel / {D}"
        print(f"| {r['setting']} | {dd} | {r['steps']} | {loss} | "
              f"{100 * r['acc_projected']:.1f} % | {100 * r['acc_raw']:.1f} % |")
    if pixels is not None:
        print(f"| raw pixels | - | - | - | {100 * pixels:.1f} % | |")


if __name__ == "__main__":
    main()
