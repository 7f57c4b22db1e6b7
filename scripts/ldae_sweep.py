"""The l-DAE ablation sweep: tokenizer x latent dimension d, pixel noise, and random init.

Trains one l-DAE per setting with `probe train ldae` (same architecture, schedule,
data and seed; only the noise space, the tokenizer and d differ), then runs the paper's
probe protocol: clean input conditioned on a small t, encoder output, global average
pool, a linear classifier (here: standardisation = BatchNorm without affine, then
logistic regression) fitted on train-split features and scored on the test split.

    python scripts/ldae_sweep.py --out runs/ldae-sweep --latent-dims 2,4,8,16 --steps 1200
    python scripts/ldae_sweep.py --out runs/ldae-tok --tokenizers pca,patch-ae,patch-vae,conv-vae \
        --latent-dims 4,8,16 --steps 400 --no-pixel

Tokenizers other than PCA are trained once per d with `probe train tokenizer` (into
OUT/tokenizers/) and passed to `probe train ldae --tokenizer-checkpoint`, so the trained
l-DAE and its random-init baseline share one tokenizer.

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
    p.add_argument("--tokenizers", default="pca",
                   help="comma-separated tokenizers: pca, patch-ae, patch-vae, conv-vae")
    p.add_argument("--tokenizer-flags", default="",
                   help="more `probe train tokenizer` flags, e.g. \"--tokenizer-width 16\" "
                        "(--tokenizer-width is passed to `probe train ldae` too)")
    p.add_argument("--random-d", type=int,
                   help="d of the random-init rows (one per tokenizer; default: the first d)")
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


def tokenizer_variant(args, tok, d):
    """The `probe train ldae` flags of tokenizer ``tok`` at latent dimension ``d``; trains
    the tokenizer first (once) when it is not PCA."""
    if tok == "pca":
        return ["--noise", "latent", "--latent-dim", str(d)]
    path = os.path.join(args.out, "tokenizers", f"{tok}-d{d}.pt")
    flags = shlex.split(args.tokenizer_flags)
    if not os.path.exists(path):
        cmd = ["train", "tokenizer", "--tokenizer", tok, "--latent-dim", str(d),
               "--data", args.data, "--image-size", str(args.image_size),
               "--channels", str(args.channels), "--patch-size", str(args.patch_size),
               "--seed", str(args.seed), "--device", args.device, "--quiet", "--out", path]
        cmd += flags + (["--threads", str(args.threads)] if args.threads else [])
        if probe_main(cmd):
            sys.exit(f"tokenizer training failed: probe {' '.join(cmd)}")
    width = (["--tokenizer-width", flags[flags.index("--tokenizer-width") + 1]]
             if "--tokenizer-width" in flags else [])
    return ["--noise", "latent", "--latent-dim", str(d), "--tokenizer", tok,
            "--tokenizer-checkpoint", path] + width


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
    row = dict(setting=name, tokenizer=model.config.get("tokenizer") if d else None, d=d,
               D=D, steps=steps, final_loss=log.get("final_loss"),
               train_wall_s=round(log.get("wall_time_s", 0.0), 1),
               command="probe " + " ".join(cmd + ["--steps", str(steps)]))
    latent_input = model.config.get("net_input") == "latent"
    for projected in (True, False):
        if (model.net.tokenizer is None or latent_input) and not projected:
            continue
        key = "acc_projected" if projected else "acc_raw"
        row[key] = linear_probe(features(model, train_x, args.probe_t, projected), train_y,
                                features(model, test_x, args.probe_t, projected), test_y)
    if model.net.tokenizer is None or latent_input:
        row["acc_raw"] = row["acc_projected"]  # pixel noise / latent input: no projection
    row["eval_s"] = round(time.time() - start, 1)
    return row


def raw_pixels(args, train_x, train_y, test_x, test_y):
    """Logistic regression on the raw pixels (cached in OUT: it is the slowest probe)."""
    path = os.path.join(args.out, "raw_pixels.json")
    key = dict(data=args.data, image_size=args.image_size, probe_train=args.probe_train,
               probe_test=args.probe_test)
    if os.path.exists(path) and json.load(open(path))["key"] == key:
        return json.load(open(path))["acc"]
    acc = linear_probe(train_x.flatten(1).numpy(), train_y, test_x.flatten(1).numpy(), test_y)
    with open(path, "w") as fh:
        json.dump({"key": key, "acc": acc}, fh)
    print(f"raw pixels, logistic regression: {acc:.4f}", flush=True)
    return acc


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits  # scikit-learn's BLAS threads too

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    os.makedirs(args.out, exist_ok=True)
    D = args.channels * args.patch_size ** 2
    dims, toks = list(map(int, args.latent_dims.split(","))), args.tokenizers.split(",")
    # (name, tokenizer, d, steps); PCA keeps the names of the first sweeps
    settings = []
    if not args.no_random:  # first: cheap, and each shares the tokenizer of a trained run
        rd = args.random_d or dims[0]
        settings += [("random-init" if tok == "pca" else f"random-init-{tok}", tok, rd, 0)
                     for tok in toks]
    settings += [(f"latent-d{d}" if tok == "pca" else f"{tok}-d{d}", tok, d, args.steps)
                 for d in dims for tok in toks]
    if not args.no_pixel:
        settings.append(("pixel", None, None, args.steps))

    train_x, train_y = image_tensor(args, "train", args.probe_train)
    test_x, test_y = image_tensor(args, "test", args.probe_test)
    pixels = None if args.no_pixels_baseline else raw_pixels(args, train_x, train_y, test_x,
                                                               test_y)
    results = []
    for name, tok, d, steps in settings:
        variant = ["--noise", "pixel"] if tok is None else tokenizer_variant(args, tok, d)
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

    print_table(results, D, pixels)
    if len(toks) > 1:
        print_grid(results, dims, toks)


def print_table(results, D, pixels):
    print("\n| setting | d / D | steps | final loss | probe acc (clean, projected) "
          "| probe acc (clean, raw) |\n|---|---|---|---|---|---|")
    for r in results:
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        dd = f"{r['d']} / {D}" if r["d"] else f"pixel / {D}"
        print(f"| {r['setting']} | {dd} | {r['steps']} | {loss} | "
              f"{100 * r['acc_projected']:.1f} % | {100 * r['acc_raw']:.1f} % |")
    if pixels is not None:
        print(f"| raw pixels | - | - | - | {100 * pixels:.1f} % | |")



def print_grid(results, dims, toks):
    """Tokenizer x d, the shape of the paper's table (projected clean input)."""
    print("\n| tokenizer | " + " | ".join(f"d = {d}" for d in dims) + " | random init |")
    print("|---|" + "---|" * (len(dims) + 1))
    for tok in toks:
        cells = {r["d"]: r for r in results if r.get("tokenizer") == tok and r["steps"]}
        rand = [r for r in results if r.get("tokenizer") == tok and not r["steps"]]
        row = [f"{100 * cells[d]['acc_projected']:.1f}" if d in cells else "" for d in dims]
        row.append(f"{100 * rand[0]['acc_projected']:.1f} (d = {rand[0]['d']})" if rand else "")
        print(f"| {tok} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
