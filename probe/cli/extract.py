"""`probe extract`: block features at chosen timesteps -> one HDF5 file."""
from ..errors import ProbeError
from ..pooling import POOL_HELP


def add_model_args(p):
    p.add_argument("--model", required=True, help="registry name (see `probe models`) or family")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="local checkpoint file or folder, or a hub id")
    g.add_argument("--random-init", action="store_true", help="untrained weights (a baseline)")
    p.add_argument("--vae", help="latent models: VAE hub id or local folder, or 'random'")
    add_arch_args(p)


def add_arch_args(p):
    """Flags that say how to read a checkpoint and build a family's architecture (shared
    by `probe extract` and `probe blocks`)."""
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow checkpoints that need arbitrary unpickling (runs their code)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE|FILE.json",
                   help="architecture flags for a family, one KEY=VALUE or a JSON file of them")
    p.add_argument("--model-flags", metavar="'--image_size 256 ...'",
                   help="the MODEL_FLAGS string you use with guided-diffusion or DiT")


def model_kwargs(args):
    kw = dict(checkpoint=args.checkpoint, random_init=getattr(args, "random_init", False),
              trust_checkpoint=args.trust_checkpoint)
    if getattr(args, "vae", None):
        kw["vae"] = None if args.vae == "none" else args.vae
    if args.model_flags:
        from ..extractors.adm import parse_flags

        kw.update({k: _value(v) for k, v in parse_flags(args.model_flags).items()})
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep and item.endswith(".json"):
            kw.update(_json_file(item))
            continue
        if not sep:
            raise ProbeError(f"bad --config {item!r}: use KEY=VALUE or a .json file")
        kw[key.strip()] = _value(value.strip())
    return kw


def _json_file(path):
    import json

    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise ProbeError(f"cannot read --config file {path}: {e}") from e


def _value(v):
    import json

    try:
        return json.loads(v.lower() if v in ("True", "False") else v)
    except ValueError:
        return v


def register(sub):
    p = sub.add_parser("extract", help="extract block features into an HDF5 file",
                       description="Noise images to timesteps t, run the model, and stream the "
                                   "pooled outputs of chosen blocks into one HDF5 file. "
                                   "Re-running the same command resumes an interrupted run.")
    add_model_args(p)
    p.add_argument("--t", action="append", default=None,
                   help="timestep(s), e.g. --t 100 or --t 10,100,500 (default 100)")
    p.add_argument("--blocks", default="all",
                   help="block names or 1-based ids, comma-separated, or 'all' (default)")
    p.add_argument("--data", default="demo", help="dataset spec NAME[:ROOT] (default: demo)")
    p.add_argument("--split", default="train", help="train | test | val (default train)")
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--pool", default="mean", help=POOL_HELP + " (default mean)")
    p.add_argument("--dtype", default="float32", help="float16 | float32 (default float32)")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--ensemble", type=int, default=1, help="average features over K noise draws")
    p.add_argument("--no-noise", action="store_true",
                   help="condition on t without adding noise (the l-DAE clean-input probe)")
    lab = p.add_mutually_exclusive_group()
    lab.add_argument("--class-label", type=int,
                     help="class-conditional models: feed this class to every image")
    lab.add_argument("--true-labels", action="store_true",
                     help="class-conditional models: feed each image's true label (leaks labels)")
    p.add_argument("--out", help="output .h5 (default MODEL-DATA-SPLIT.h5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--stack-t", action="store_true",
                   help="run all timesteps of a batch in one forward pass (faster on GPUs)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip images that cannot be decoded (recorded in the file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args):
    from .. import distributed
    from ..extraction import extract

    label = "true" if args.true_labels else args.class_label
    device = distributed.setup(args.device)
    try:
        _extract(extract, args, label, device)
    finally:
        distributed.teardown()


def _extract(extract, args, label, device):
    extract(args.model, data=args.data, t=args.t or [100], blocks=args.blocks, out=args.out,
            split=args.split, pool=args.pool, dtype=args.dtype, noise_seed=args.noise_seed,
            ensemble=args.ensemble, add_noise=not args.no_noise, class_label=label,
            batch_size=args.batch_size, num_workers=args.num_workers, device=device,
            overwrite=args.overwrite, skip_bad=args.skip_bad, limit=args.limit,
            stack_t=args.stack_t, progress=not args.quiet, command=args.command_line,
            **model_kwargs(args))
