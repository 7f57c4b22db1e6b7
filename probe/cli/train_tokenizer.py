"""`probe train tokenizer`, and the tokenizer flags of `probe train ldae`."""
import argparse
import os
from typing import Any

from .common import add_device, add_overwrite, add_quiet, add_seed, add_threads, refuse_existing

KINDS = ("pca", "patch-ae", "patch-vae", "conv-vae")  # probe.extractors.ldae.tokenizer.KINDS


def add_tokenizer_parser(fam: argparse._SubParsersAction, patch_size: int) -> None:
    q = fam.add_parser("tokenizer", help="an l-DAE tokenizer alone (PCA, patch AE/VAE, conv "
                                         "VAE), for probe train ldae --tokenizer-checkpoint",
                       description="Fit or train an l-DAE tokenizer on a dataset and write it "
                                   "to one file.")
    g = q.add_argument_group("data and shape")
    g.add_argument("--data", default="demo", help="dataset spec NAME[:ROOT] (default: demo)")
    g.add_argument("--split", default="train", help="split to train on (default: train)")
    g.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    g.add_argument("--channels", type=int, help="image channels (default: the data's)")
    g.add_argument("--limit", type=int, help="train on the first N images only")
    g.add_argument("--patch-size", type=int, default=patch_size)
    g.add_argument("--latent-dim", "-d", type=int, help="d (default: patch dim / 4)")
    g.add_argument("--pca-patches", type=int, default=50000,
                   help="random training patches (PCA, patch AE/VAE; default 50000)")
    tokenizer_flags(q, checkpoint=False)
    g = q.add_argument_group("run")
    add_seed(g, "the patch sample, the batches and the VAE noise")
    g.add_argument("--out", help="output file (default runs/tokenizer-KIND-dD.pt)")
    add_device(g)
    add_threads(g)
    add_overwrite(g, "the file --out")
    add_quiet(g)
    q.set_defaults(func=run_tokenizer)


def tokenizer_flags(q: argparse.ArgumentParser, checkpoint: bool) -> None:
    g = q.add_argument_group("the tokenizer (trained first, then frozen)")
    g.add_argument("--tokenizer", choices=KINDS,
                   default="pca", help="patch-wise PCA (default), linear AE or VAE per patch, "
                                       "or a small convolutional VAE")
    if checkpoint:
        g.add_argument("--tokenizer-checkpoint", metavar="FILE",
                       help="use this `probe train tokenizer` file instead of training one")
    g.add_argument("--tokenizer-steps", type=int,
                   help="Adam steps (default 2000 patch-wise, 500 conv-vae)")
    g.add_argument("--tokenizer-batch-size", type=int,
                   help="patches (default 1024) or images (conv-vae, 32) per step")
    g.add_argument("--tokenizer-lr", type=float,
                   help="Adam learning rate (default 3e-3 patch-wise, 2e-3 conv-vae)")
    g.add_argument("--kl-weight", type=float, help="weight of the VAEs' KL term (default 0.1)")
    g.add_argument("--tokenizer-width", type=int, default=16,
                   help="conv-vae: channels of its first level (default 16)")


def tokenizer_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(steps=args.tokenizer_steps, batch_size=args.tokenizer_batch_size,
                lr=args.tokenizer_lr, kl_weight=args.kl_weight)


def run_tokenizer(args: argparse.Namespace) -> int:
    from ..data import data_channels, load_dataset
    from ..device import resolve_device
    from ..extractors.ldae.extractor import validate_config
    from ..extractors.ldae.tokenizer import make_tokenizer
    from ..train import loop
    from ..train.tokenizers import fit_tokenizer, options, save_tokenizer

    options(args.tokenizer, **tokenizer_options(args))  # bad options fail before any work
    device = resolve_device(args.device)
    channels = args.channels or data_channels(load_dataset(args.data, args.split,
                                                            args.image_size))
    cfg = validate_config(dict(image_size=args.image_size, in_channels=channels,
                               patch_size=args.patch_size, latent_dim=args.latent_dim,
                               tokenizer=args.tokenizer, tokenizer_width=args.tokenizer_width))
    out = args.out or os.path.join("runs", f"tokenizer-{args.tokenizer}-d{cfg['latent_dim']}.pt")
    refuse_existing([out], args.overwrite)
    images = loop.Images(load_dataset(args.data, args.split, args.image_size, channels),
                         limit=args.limit, progress=not args.quiet)
    loop.seed_everything(args.seed)
    tok = make_tokenizer(cfg)
    assert tok is not None  # KINDS are all tokenizers
    tok = tok.to(device)
    meta = fit_tokenizer(tok, images, lambda x: x * 2.0 - 1.0, patches=args.pca_patches,
                         seed=args.seed, progress=not args.quiet, **tokenizer_options(args))
    meta.update(data=args.data, split=args.split, limit=args.limit)
    save_tokenizer(tok, cfg, meta, out)
    recon = meta.get("final_recon")
    print(f"trained a {args.tokenizer} tokenizer (d={cfg['latent_dim']}) in "
          f"{meta['wall_time_s']} s" + ("" if recon is None else f", reconstruction {recon:.4f}"))
    print(f"  file: {out}")
    print(f"  use:  probe train ldae --tokenizer {args.tokenizer} --tokenizer-checkpoint {out} ...")
    return 0


def saved_tokenizer_meta(out: str) -> Any:
    import torch

    path = os.path.join(out, "model.pt")
    if not os.path.exists(path):
        return None
    return (torch.load(path, map_location="cpu", weights_only=True).get("meta") or {}).get(
        "tokenizer")

