"""`probe models` (the zoo) and `probe blocks NAME` (block names, ids and shapes)."""
import torch

from ..errors import ProbeError


def register(sub):
    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=run_models)
    p = sub.add_parser("blocks", help="list a model's blocks: names, ids, output shapes")
    from .extract import add_arch_args

    p.add_argument("model", help="registry name, or a family (adm, dit, ldae) with --checkpoint "
                                 "or its flags")
    p.add_argument("--checkpoint", help="read the architecture from this checkpoint")
    p.add_argument("--image-size", type=int,
                   help="input side in pixels for the U-Nets (ADM), to see the shapes at "
                        "another resolution")
    add_arch_args(p)
    p.set_defaults(func=run_blocks)


def run_models(args):
    from ..extractors.registry import ALIASES, MODELS

    aliases = {}
    for a, n in ALIASES.items():
        aliases.setdefault(n, []).append(a)
    print(f"{'name':<24} {'family':<6} {'input':<12} {'weights'}")
    for name, spec in MODELS.items():
        size = spec.get("image_size")
        inp = f"{size}px" + (" latent" if spec.get("vae") else "") if size else "-"
        src = spec.get("url") or spec.get("hub") or spec.get("file") or spec.get("note") or "-"
        if spec.get("hub") and spec.get("url"):
            src = f"{spec['url']} | hub {spec['hub']}"
        alias = f" (alias {', '.join(aliases[name])})" if name in aliases else ""
        print(f"{name + alias:<24} {spec['family']:<6} {inp:<12} {src}")
    return 0


def _meta_model(name, checkpoint, trust_checkpoint=False, config=None):
    from ..extractors.registry import FAMILIES, load_model, resolve

    config = dict(config or {})
    family = name if name in FAMILIES else resolve(name)[1]["family"]
    if family == "dit":
        config.setdefault("vae", None)  # block shapes do not depend on the VAE
    if checkpoint:
        return load_model(name, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint, **config)
    arch_flags = config.keys() - {"vae"}
    if name in FAMILIES and not arch_flags:
        raise ProbeError(f"`probe blocks {name}` needs --checkpoint, or the architecture as "
                         "--model-flags/--config (or use a registry name, see `probe models`)")
    if name not in FAMILIES:
        name, spec = resolve(name)
        if spec.get("file") and not arch_flags:  # shipped small models: the real thing
            return load_model(name)
    with torch.device("meta"):  # the architecture only: no memory, no weights
        return load_model(name, random_init=True, **config)


def run_blocks(args):
    from ..extractors.hooks import capture, run_until_stop

    from .extract import model_kwargs

    kw = model_kwargs(args)
    checkpoint, trust = kw.pop("checkpoint"), kw.pop("trust_checkpoint")
    kw.pop("random_init")
    model = _meta_model(args.model, checkpoint, trust, kw)
    device = next(model.parameters()).device
    c, h, w = model.input_shape
    if args.image_size:
        if model.vae is not None or model.family != "adm":
            raise ProbeError("--image-size applies to convolutional pixel-space models (adm)")
        h = w = args.image_size
    x = torch.zeros(1, c, h, w, device=device)
    names = model.block_names
    mods = model._block_modules()
    y = None
    if model.num_classes is not None and model.null_class is None:
        y = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad(), capture(mods) as out:
        run_until_stop(model.forward, x, torch.zeros(1, dtype=torch.long, device=device), y)
    print(f"{model.name}: {len(names)} blocks, input {(c, h, w)}")
    print(f"{'id':>4}  {'block':<20} output shape (C, H, W) or (tokens, D)")
    for i, n in enumerate(names, 1):
        print(f"{i:>4}  {n:<20} {tuple(out[n].shape[1:])}")
    return 0
