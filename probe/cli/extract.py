"""`probe extract`: block features at chosen timesteps -> one HDF5 file."""
from __future__ import annotations

import argparse
from typing import Any

from ..options import NoiseOptions
from ..pipeline.pooling import POOL_HELP
from .common import (add_precision, add_run_flags, add_selection, output_options, run_options,
                     selection)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registry name (see `probe models`) or family")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="local checkpoint file or folder, or a hub id")
    g.add_argument("--random-init", action="store_true", help="untrained weights (a baseline)")
    p.add_argument("--vae", help="latent models: VAE hub id or local folder, or 'random'")
    p.add_argument("--prompt", help="sd, sdxl: the text prompt (default empty); {class} is filled with "
                                    "a class name, with --true-labels (leaks labels) or "
                                    "--class-label N")
    add_arch_args(p)


def add_arch_args(p: argparse.ArgumentParser) -> None:
    """Flags that say how to read a checkpoint and build a family's architecture (shared
    by `probe extract` and `probe blocks`)."""
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow checkpoints that need arbitrary unpickling (runs their code)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE|FILE.json",
                   help="architecture flags for a family, one KEY=VALUE or a JSON file of them")
    p.add_argument("--model-flags", metavar="'--image_size 256 ...'",
                   help="the MODEL_FLAGS string you use with guided-diffusion or DiT")


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from ..extractors.config import config_value, parse_config_items

    kw = dict(checkpoint=args.checkpoint, random_init=getattr(args, "random_init", False),
              trust_checkpoint=args.trust_checkpoint)
    if getattr(args, "prompt", None) is not None:
        kw["prompt"] = args.prompt
    if getattr(args, "vae", None):
        kw["vae"] = None if args.vae == "none" else args.vae
    if args.model_flags:
        from ..extractors.adm.extractor import parse_flags

        kw.update({k: config_value(v) for k, v in parse_flags(args.model_flags).items()})
    kw.update(parse_config_items(args.config))
    return kw


def register(sub: Any) -> None:
    p = sub.add_parser("extract", help="extract block features into an HDF5 file",
                       description="Noise images to timesteps t, run the model, and stream the "
                                   "pooled outputs of chosen blocks into one HDF5 file. "
                                   "Re-running the same command resumes an interrupted run.")
    add_model_args(p)
    add_selection(p, t_default="100; none for timm:/torchvision: networks", keys=False)
    p.add_argument("--data", default="demo", help="dataset spec NAME[:ROOT] (default: demo)")
    p.add_argument("--split", default="train", help="train | test | val (default train)")
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--pool", default="mean", help=POOL_HELP + " (default mean)")
    p.add_argument("--dtype", default="float32", help="float16 | float32 (default float32)")
    p.add_argument("--noise-seed", dest="seed", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # its old name
    p.add_argument("--ensemble", type=int, default=1, help="average features over K noise draws")
    p.add_argument("--no-noise", action="store_true",
                   help="condition on t without adding noise (the l-DAE clean-input probe)")
    lab = p.add_mutually_exclusive_group()
    lab.add_argument("--class-label", type=int,
                     help="class-conditional models: feed this class to every image")
    lab.add_argument("--true-labels", action="store_true",
                     help="class-conditional models: feed each image's true label (leaks labels)")
    p.add_argument("--out", help="output .h5 (default MODEL-DATA-SPLIT.h5)")
    add_precision(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the blocks: faster batches after a first one that "
                        "pays the compile time (see docs/extract.md)")
    p.add_argument("--stack-t", action="store_true",
                   help="run all timesteps of a batch in one forward pass (faster on GPUs)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip images that cannot be decoded (recorded in the file)")
    add_run_flags(p, seed_what="the noise, drawn per sample from (seed, sample id, t)",
                  overwrite="an existing output (a matching unfinished run resumes without it)",
                  batch_size=32, batch_what="images per forward pass", num_workers=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..pipeline import distributed
    from ..pipeline.run import extract

    device = distributed.setup(args.device)
    try:
        extract(args.model, data=args.data, blocks=args.blocks or "all", split=args.split,
                pool=args.pool, limit=args.limit, skip_bad=args.skip_bad, stack_t=args.stack_t,
                noise=noise_options(args),
                run=run_options(args, device=device, precision=args.precision,
                                compile=args.compile),
                output=output_options(args), command=args.command_line, **model_kwargs(args))
    finally:
        distributed.teardown()


def noise_options(args: argparse.Namespace) -> NoiseOptions:
    label = "true" if args.true_labels else args.class_label
    return NoiseOptions(t=selection(args)[0], ensemble=args.ensemble, add_noise=not args.no_noise,
                        noise_seed=args.seed, class_label=label)
