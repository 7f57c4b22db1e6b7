"""`probe correspond`: keypoint matching with block feature maps, scored by PCK."""
import argparse
from typing import Any

from ..errors import ProbeError
from .common import add_precision, add_run_flags, add_selection, selection


def register(sub: Any) -> None:
    p = sub.add_parser(
        "correspond", help="semantic correspondence: match keypoints with block maps, PCK",
        description="Match the keypoints of image pairs with the feature maps of chosen "
                    "blocks (DIFT's protocol by default) and score PCK in original image "
                    "coordinates. Maps are extracted once into a cache (--pool none) and "
                    "reused by later runs; a killed run resumes.")
    p.add_argument("--model", help="registry name or family (or give --features)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="local checkpoint file or folder, or a hub id")
    g.add_argument("--random-init", action="store_true", help="untrained weights (a baseline)")
    p.add_argument("--vae", help="latent models: VAE hub id or local folder, or 'random'")
    p.add_argument("--prompt", help="sd, sdxl: the prompt; '{class}' is filled with each pair's "
                                    "category (the category enters the features)")
    from .extract import add_arch_args

    add_arch_args(p)
    p.add_argument("--features", nargs="+", metavar="FILE",
                   help="feature files made by probe correspond (instead of --model); several "
                        "files are paired by image id and fused with --concat")
    p.add_argument("--preset", choices=["dift-sd", "dift-adm"],
                   help="DIFT's settings: dift-sd (sd-2.1, 768 px, t 261, up_blocks.1, "
                        "ensemble 8, 'a photo of a {class}'), dift-adm (adm-256-uncond, 512 px, "
                        "t 101, output_blocks.4, ensemble 8)")
    p.add_argument("--data", required=True,
                   help="spair:ROOT | pf-pascal:ROOT | pf-willow:ROOT | warp:ROOT (any image "
                        "folder, or warp:demo)")
    p.add_argument("--split", default="test", help="trn | val | test (default test)")
    add_selection(p, t_default="100; none for timm:/torchvision: networks")
    s = p.add_argument_group("scoring and matching")
    s.add_argument("--alpha", default="0.1", help="PCK alphas, comma list (default 0.1)")
    s.add_argument("--threshold", choices=["bbox", "img", "kps"],
                   help="PCK threshold (default: the benchmark's: spair/warp bbox, pf-pascal "
                        "img, pf-willow kps)")
    s.add_argument("--match", default="argmax", choices=["argmax", "mutual", "soft"],
                   help="argmax (DIFT), mutual nearest neighbours, soft (window soft-argmax)")
    s.add_argument("--no-upsample", action="store_true",
                   help="match on the feature grid, predict the cell centre (SD-DINO)")
    s.add_argument("--window", type=int, default=7, help="soft: half-window in feature cells")
    s.add_argument("--beta", type=float, default=0.02, help="soft: softmax temperature")
    s.add_argument("--concat", action="store_true",
                   help="one variant: every selected key L2-normalised, then concatenated")
    s.add_argument("--literal", action="store_true",
                   help="upsample the maps themselves, in channel chunks (DIFT's arithmetic "
                        "step by step; the default gives the same similarities without "
                        "upsampling any channel)")
    s.add_argument("--memory-mb", type=int, default=256,
                   help="--literal: bound on one upsampled channel chunk (default 256 MiB)")
    e = p.add_argument_group("features and pairs")
    e.add_argument("--image-size", type=int, help="side of the square images fed (default: "
                                                   "the model's; adm and sd take others)")
    e.add_argument("--ensemble", type=int, default=1, help="average maps over K noise draws")
    e.add_argument("--cache", help="feature cache folder (default OUT/features)")
    e.add_argument("--limit", type=int, help="only the first N pairs")
    e.add_argument("--warp-points", type=int, default=20, help="warp: keypoints per pair")
    e.add_argument("--warp-shift", type=float, default=0.15,
                   help="warp: corner shift as a fraction of the side (default 0.15)")
    e.add_argument("--warp-jitter", type=float, default=0.0,
                   help="warp: brightness/contrast jitter (default 0)")
    e.add_argument("--figure-pairs", type=int, default=4, help="pairs drawn (default 4)")
    add_precision(e)
    p.add_argument("--out", required=True, help="output folder")
    add_run_flags(p, seed_what="the extraction noise and the warp pairs",
                  overwrite="an existing pck.json", batch_size=8,
                  batch_what="images per forward pass")
    p.set_defaults(func=run)


def _alphas(text):
    try:
        return tuple(float(a) for a in str(text).split(",") if a.strip())
    except ValueError:
        raise ProbeError(f"bad --alpha {text!r}: give numbers, e.g. --alpha 0.05,0.1") from None


def run(args: argparse.Namespace) -> int:
    from ..correspondence import CorrespondOptions, MatchOptions, WarpOptions, correspond
    from .extract import model_kwargs

    options = CorrespondOptions(
        alphas=_alphas(args.alpha), threshold=args.threshold,
        match=MatchOptions(method=args.match, upsample=not args.no_upsample, window=args.window,
                           beta=args.beta, literal=args.literal,
                           memory_mb=args.memory_mb),
        concat=args.concat, image_size=args.image_size, ensemble=args.ensemble, seed=args.seed,
        warp=WarpOptions(seed=args.seed, points=args.warp_points, shift=args.warp_shift,
                         jitter=args.warp_jitter),
        limit=args.limit, figure_pairs=args.figure_pairs, precision=args.precision)
    kw = {}
    if args.model or args.preset:
        if args.features:
            raise ProbeError("give --model (maps are extracted) or --features, not both")
        if args.model:
            kw = model_kwargs(args)
    elif args.checkpoint or args.random_init or args.prompt:
        raise ProbeError("--checkpoint, --random-init and --prompt need --model")
    t, blocks, keys = selection(args)
    correspond(args.model, args.data, t=t, blocks=blocks, keys=keys, out=args.out,
               features=args.features, preset=args.preset, options=options, split=args.split,
               cache=args.cache, device=args.device, batch_size=args.batch_size,
               overwrite=args.overwrite, progress=not args.quiet, command=args.command_line,
               **kw)
    print(f"wrote {args.out}/pck.json")
    return 0

