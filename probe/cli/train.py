"""`probe train ldae|dit|adm|sit`: train a model on a dataset and write a loadable checkpoint."""
from __future__ import annotations

import argparse
import math
import os
from typing import Any

from ..errors import ProbeError
from .common import (add_batch_size, add_device, add_num_workers, add_overwrite, add_quiet,
                     add_seed, add_threads, output_options, run_options)
from .train_tokenizer import add_tokenizer_parser, saved_tokenizer_meta, tokenizer_flags, tokenizer_options

# Small pixel-space defaults that train on 2 CPU cores in minutes to an hour.
SMALL_DIT: dict[str, Any] = dict(patch_size=4, hidden_size=192, depth=6, num_heads=3,
                                 class_dropout_prob=0.0, num_classes=0, learn_sigma=False)
SMALL_ADM = dict(num_channels=64, num_res_blocks=2, channel_mult="1,2,2",
                 attention_resolutions="16,8", num_heads=4, num_head_channels=32,
                 use_scale_shift_norm=True, resblock_updown=True, learn_sigma=False,
                 class_cond=False, diffusion_steps=1000, noise_schedule="linear")


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train an l-DAE, DiT, ADM, SiT or supervised classifier",
                       description="Train a model with the toolkit's own recipes. Checkpoints "
                                   "every epoch; rerun with --resume after an interruption.")
    p.set_defaults(func=_no_family)
    fam = p.add_subparsers(dest="family", metavar="FAMILY")
    q = fam.add_parser("ldae", help="latent denoising autoencoder (Chen et al. 2024)",
                       description="Train an l-DAE: a tokenizer (patch-wise PCA by default), "
                                   "noise in its latent, clean-image target. Flags switch "
                                   "the paper's ablations.")
    _common(q, lr=1e-3)
    _arch(q, SMALL_DIT)
    g = q.add_argument_group("l-DAE recipe and ablations")
    g.add_argument("--noise", choices=("latent", "pixel"), default="latent",
                   help="latent: noise in the first d PCA components (l-DAE, default); "
                        "pixel: classical DAE")
    g.add_argument("--latent-dim", "-d", type=int,
                   help="d, the PCA components kept (default: patch dim / 4)")
    g.add_argument("--target", choices=("clean", "noise"), default="clean",
                   help="predict the clean image (default) or the noise")
    g.add_argument("--schedule", choices=("sigma-linear", "gamma2-linear"),
                   default="sigma-linear",
                   help="sigma-linear: gamma=1, sigma 0..sigma-max (default); gamma2-linear: "
                        "gamma^2 from 1 to 0, sigma = sqrt(1 - gamma^2)")
    g.add_argument("--sigma-max", type=float, default=math.sqrt(2),
                   help="largest sigma of sigma-linear (default sqrt 2)")
    g.add_argument("--num-timesteps", type=int, default=1000, help="T (default 1000)")
    g.add_argument("--single-t", type=int,
                   help="train at this one timestep instead of all (single noise level)")
    g.add_argument("--encoder-depth", type=int,
                   help="blocks in the encoder (default: half of --depth)")
    g.add_argument("--residual-weight", type=float, default=0.1,
                   help="loss weight of the PCA components beyond d (default 0.1)")
    g.add_argument("--loss-weight", choices=("sigma", "none"), default="sigma",
                   help="sigma: weight 1/(1+sigma_t^2) (default); none: 1")
    g.add_argument("--mlp-ratio", type=float, default=4.0)
    g.add_argument("--pca-patches", type=int, default=50000,
                   help="random training patches the PCA (or patch AE/VAE) is fitted on "
                        "(default 50000)")
    g.add_argument("--input", choices=("projected", "latent"), default="projected",
                   help="network input: the noisy latent decoded to pixels (default) or the "
                        "latent map itself")
    g.add_argument("--output", choices=("original", "projected"), default="original",
                   help="clean target: the original image (default) or the image as the "
                        "tokenizer keeps it")
    g.add_argument("--augment", choices=("none", "crop"), default="none",
                   help="crop: pad by S/8 px and crop back at a random offset (default none)")
    tokenizer_flags(q, checkpoint=True)
    q.set_defaults(func=run)

    add_tokenizer_parser(fam, SMALL_DIT["patch_size"])

    q = fam.add_parser("dit", help="small pixel-space DiT, DDPM (epsilon) training",
                       description="Train a DiT (unconditional, epsilon prediction, linear "
                                   "schedule of 1000 steps) on pixels. Other DiT arguments: "
                                   "--config KEY=VALUE.")
    _common(q, lr=3e-4)
    _arch(q, SMALL_DIT)
    q.set_defaults(func=run)

    q = fam.add_parser("adm", help="small ADM U-Net, DDPM (epsilon) training",
                       description="Train a guided-diffusion U-Net (unconditional, epsilon "
                                   "prediction) on pixels; set its flags with --config "
                                   f"KEY=VALUE (defaults: {_flags_text(SMALL_ADM)}).")
    _common(q, lr=2e-4)
    q.set_defaults(func=run)

    q = fam.add_parser("sit", help="small pixel-space SiT, flow matching (velocity) training",
                       description="Train a SiT (DiT's network, unconditional) with SiT's "
                                   "default transport: linear interpolant, velocity "
                                   "prediction, uniform t in [0, 1]. Time runs in SiT's own "
                                   "direction (t = 1 clean); --config convention=repa trains "
                                   "in REPA's (t = 0 clean). Other SiT arguments: --config "
                                   "KEY=VALUE.")
    _common(q, lr=3e-4)
    _arch(q, SMALL_DIT)
    q.set_defaults(func=run)

    _classifier_parser(fam)


def _classifier_parser(fam):
    q = fam.add_parser("classifier", help="a supervised timm classifier (cross-entropy)",
                       description="Train a timm image classifier with cross-entropy on the "
                                   "labels (inputs normalised with mean = std = 0.5), as a "
                                   "supervised reference for the diffusion models' features. "
                                   "The default is a ViT the size of the shipped dit-fmnist.")
    _common(q, lr=1e-3, image_size=28)
    g = q.add_argument_group("architecture (a timm model)")
    g.add_argument("--arch", default="vit_tiny_patch16_224",
                   help="timm architecture name (default vit_tiny_patch16_224, resized by the "
                        "flags below; other timm arguments: --config KEY=VALUE)")
    g.add_argument("--patch-size", type=int, help="ViT patch size (default 7)")
    g.add_argument("--hidden-size", type=int, help="ViT width, timm's embed_dim (default 128)")
    g.add_argument("--depth", type=int, help="ViT blocks (default 4)")
    g.add_argument("--num-heads", type=int, help="ViT attention heads (default 2)")
    g.add_argument("--eval-split", metavar="SPLIT",
                   help="after training, measure top-1 on this split of --data (e.g. test) "
                        "and record it in log.json")
    q.set_defaults(func=run_classifier)


def _flags_text(d):
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _common(q, lr, image_size=32):
    g = q.add_argument_group("data")
    g.add_argument("--data", default="demo", help="dataset spec NAME[:ROOT] (default: demo)")
    g.add_argument("--split", default="train", help="split to train on (default: train)")
    g.add_argument("--image-size", type=int, default=image_size,
                   help=f"image side in pixels (default {image_size})")
    g.add_argument("--channels", type=int, help="image channels (default: the data's)")
    g.add_argument("--limit", type=int, help="train on the first N images only")
    add_num_workers(g)
    g = q.add_argument_group("training")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="passes over the data (default 1)")
    length.add_argument("--steps", type=int, help="optimizer steps in total, instead of epochs")
    add_batch_size(g, 128, "images per optimizer step")
    g.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (default {lr})")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=int, default=0, help="linear warmup steps (default 0)")
    add_seed(g, "the init, the data order, the noise and the PCA")
    g.add_argument("--config", action="append", default=[], metavar="KEY=VALUE|FILE.json",
                   help="model arguments by their original names, e.g. --config depth=8")
    g = q.add_argument_group("run")
    g.add_argument("--out", help="output folder (default runs/FAMILY)")
    add_device(g)
    add_threads(g)
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    add_overwrite(g, "the run saved in --out")
    g.add_argument("--save-every", type=int, default=0,
                   help="also checkpoint every N steps (default: every epoch only)")
    g.add_argument("--log-every", type=int, default=10, help="loss curve resolution in steps")
    add_quiet(g)


def _arch(q, d):
    g = q.add_argument_group("architecture (a DiT-style ViT)")
    g.add_argument("--patch-size", type=int, default=d["patch_size"])
    g.add_argument("--hidden-size", type=int, default=d["hidden_size"])
    g.add_argument("--depth", type=int, default=d["depth"])
    g.add_argument("--num-heads", type=int, default=d["num_heads"])


def _no_family(args):
    raise ProbeError("say what to train: probe train ldae|dit|adm|sit|classifier|tokenizer (see "
                     "`probe train --help`)")


def _model_config(args, channels):
    from ..extractors.config import parse_config_items

    extra = parse_config_items(args.config)
    if args.family == "ldae":
        cfg = dict(image_size=args.image_size, in_channels=channels,
                   patch_size=args.patch_size, hidden_size=args.hidden_size, depth=args.depth,
                   num_heads=args.num_heads, mlp_ratio=args.mlp_ratio,
                   encoder_depth=args.encoder_depth, noise_space=args.noise,
                   latent_dim=args.latent_dim, schedule=args.schedule,
                   sigma_max=args.sigma_max, num_timesteps=args.num_timesteps,
                   target=args.target, residual_weight=args.residual_weight,
                   loss_weight=args.loss_weight, single_t=args.single_t,
                   tokenizer=args.tokenizer, tokenizer_width=args.tokenizer_width,
                   net_input=args.input, net_output=args.output)
        if args.noise == "pixel":  # the tokenizer flags' defaults mean "none" here
            if args.tokenizer_checkpoint:
                raise ProbeError("--tokenizer-checkpoint only applies to --noise latent (the "
                                 "pixel DAE has no tokenizer): drop it")
            for key, default in (("tokenizer", "pca"), ("net_input", "projected"),
                                 ("net_output", "original")):
                cfg[key] = None if cfg[key] == default else cfg[key]
        from ..extractors.ldae.extractor import validate_config

        return validate_config({**cfg, **extra})
    if args.family == "sit":
        from ..extractors.sit.net import resolve_config as sit_config

        cfg = dict(SMALL_DIT, input_size=args.image_size, in_channels=channels,
                   patch_size=args.patch_size, hidden_size=args.hidden_size, depth=args.depth,
                   num_heads=args.num_heads)
        convention = extra.pop("convention", "sit")
        if "vae" in extra:
            raise ProbeError("probe train sit trains on pixels; latent (VAE) SiTs are not "
                             "supported here")
        from ..extractors.sit.schedule import InterpolantSchedule

        InterpolantSchedule(convention)  # a bad convention fails here, before any work
        return {**sit_config({**cfg, **extra}), "convention": convention}
    if args.family == "dit":
        from ..extractors.dit.extractor import resolve_config

        cfg = dict(SMALL_DIT, input_size=args.image_size, in_channels=channels,
                   patch_size=args.patch_size, hidden_size=args.hidden_size, depth=args.depth,
                   num_heads=args.num_heads)
        if "vae" in extra:
            raise ProbeError("probe train dit trains on pixels; latent (VAE) DiTs are not "
                             "supported here")
        return resolve_config({**cfg, **extra})
    from ..extractors.adm.extractor import resolve_flags
    from ..extractors.adm.unet import check_attention_reached

    cfg = {**SMALL_ADM, "image_size": args.image_size, **extra}
    check_attention_reached(resolve_flags(cfg))  # bad flags fail here, before any work
    return cfg


def _build(args, cfg, images, resume):
    if args.family == "ldae":
        from ..train.ldae import LDAEObjective, build

        model = build(cfg, None if resume else images, args.pca_patches, args.seed,
                      tokenizer_checkpoint=args.tokenizer_checkpoint,
                      tokenizer_options=tokenizer_options(args), progress=not args.quiet)
        if resume:  # what the first session did to the tokenizer
            model.tokenizer_meta = saved_tokenizer_meta(args.out or "runs/ldae")
        return LDAEObjective(model, augment=args.augment)
    from ..extractors.registry import family_module

    model = family_module(args.family).create(args.family, {"config": cfg}, random_init=True)
    if args.family == "sit":
        from ..train.flow import FlowObjective

        return FlowObjective(model, config=cfg)
    from ..train.ddpm import DDPMObjective

    return DDPMObjective(model, config=cfg)


def run(args: argparse.Namespace) -> int:
    from ..data import data_channels, load_dataset
    from ..train import loop

    out = args.out or os.path.join("runs", args.family)
    epochs = None if args.steps is not None else (args.epochs if args.epochs is not None else 1)
    loop.check_options(epochs, args.steps, args.batch_size, args.lr, args.warmup,
                       args.save_every, args.log_every)  # fail before any work
    loop.resolve_device(args.device)
    if args.limit is not None and args.limit < 1:
        raise ProbeError(f"--limit must be at least 1, not {args.limit}")
    if args.family == "adm":
        if args.channels not in (None, 3):
            raise ProbeError("ADM U-Nets take 3-channel images (grayscale is expanded): "
                             "drop --channels")
        channels = 3
    else:
        channels = args.channels or data_channels(load_dataset(args.data, args.split,
                                                                args.image_size))
    cfg = _model_config(args, channels)
    dataset = load_dataset(args.data, args.split, args.image_size, channels)
    state = loop.prepare_out(out, args.resume, args.overwrite)
    from ..pipeline.gpu import resolve_num_workers

    workers = resolve_num_workers(args.num_workers, loop.resolve_device(args.device))
    images = loop.Images(dataset, limit=args.limit, num_workers=workers, progress=not args.quiet)
    loop.seed_everything(args.seed)
    objective = _build(args, cfg, images, state is not None)
    run_config = dict(family=args.family, model=cfg, data=args.data, split=args.split,
                      image_size=args.image_size, channels=channels, limit=args.limit)
    if args.family == "ldae":
        run_config["pca_patches"] = args.pca_patches
        # only when used: runs begun before these options existed still resume
        if args.augment != "none":
            run_config["augment"] = args.augment
        if args.tokenizer_checkpoint:
            run_config["tokenizer_checkpoint"] = args.tokenizer_checkpoint
        if args.tokenizer != "pca":
            run_config["tokenizer_options"] = tokenizer_options(args)
    log = loop.train(objective, images, out, epochs=epochs, steps=args.steps,
                     batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                     warmup=args.warmup, seed=args.seed, device=args.device, state=state,
                     save_every=args.save_every, log_every=args.log_every, run_config=run_config,
                     command=_options(args), progress=not args.quiet)
    model_path = os.path.join(out, loop.MODEL_FILE)
    final = log.get("final_loss")
    print(f"trained {args.family}: step {log['step']} ({log['epochs_done']:.2f} epochs), "
          f"final loss {final if final is None else f'{final:.4f}'}, "
          f"{log['wall_time_s']:.1f} s")
    print(f"  model: {model_path}")
    print(f"  log:   {os.path.join(out, loop.LOG_FILE)}")
    if args.family == "ldae":
        print(f"  load:  probe.load_model('ldae', checkpoint='{model_path}')")
    else:
        print(f"  load:  probe extract --model {args.family} --checkpoint {model_path} "
              f"--config {os.path.join(out, 'config.json')} ...")
    return 0


def run_classifier(args: argparse.Namespace) -> int:
    from ..extractors.config import parse_config_items
    from ..train.classifier import train_classifier

    out = args.out or os.path.join("runs", "classifier")
    vit = dict(patch_size=args.patch_size, embed_dim=args.hidden_size, depth=args.depth,
               num_heads=args.num_heads)
    log = train_classifier(
        args.data, out, arch=args.arch, split=args.split, image_size=args.image_size,
        channels=args.channels, limit=args.limit, vit=vit, config=parse_config_items(args.config),
        epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, seed=args.seed,
        resume=args.resume, save_every=args.save_every, log_every=args.log_every,
        eval_split=args.eval_split, run=run_options(args, batch_size=None),
        output=output_options(args, out=out), command=_options(args))
    final = log.get("final_loss")
    print(f"trained classifier {args.arch}: step {log['step']} ({log['epochs_done']:.2f} "
          f"epochs), final loss {final if final is None else f'{final:.4f}'}, "
          f"{log['wall_time_s']:.1f} s")
    if "eval" in log:
        e = log["eval"]
        print(f"  {e['split']} top-1: {100 * e['top1']:.2f} % ({e['num_images']:,} images)")
    model_path = os.path.join(out, "model.pt")
    print(f"  model: {model_path}")
    print(f"  log:   {os.path.join(out, 'log.json')}")
    print(f"  load:  probe extract --model timm:{args.arch} --checkpoint {model_path} "
          f"--config {os.path.join(out, 'config.json')} ...")
    return 0


def _options(args):
    """The command's options, recorded in the log of each session."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "debug", "command")}
