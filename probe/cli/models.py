"""`probe models` (the zoo) and `probe blocks NAME` (block names, ids and shapes)."""
import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=run_models)
    p = sub.add_parser("blocks", help="list a model's blocks: names, ids, output shapes")
    from .extract import add_arch_args

    p.add_argument("model", help="registry name, timm:NAME, torchvision:NAME, or a family "
                                 "(adm, dit, ldae) with --checkpoint or its flags")
    p.add_argument("--checkpoint", help="read the architecture from this checkpoint")
    p.add_argument("--image-size", type=int,
                   help="input side in pixels for the U-Nets (ADM), to see the shapes at "
                        "another resolution")
    add_arch_args(p)
    p.set_defaults(func=run_blocks)


def run_models(args: argparse.Namespace) -> int:
    from ..extractors.registry import ALIASES, MODELS

    aliases: dict[str, list[str]] = {}
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
    print("\nReference networks (no timestep, they see the clean image): timm:NAME for any "
          "timm.list_models() name,\ntorchvision:NAME for any torchvision classification model "
          "(hub weights, --checkpoint or --random-init).")
    return 0


def run_blocks(args: argparse.Namespace) -> int:
    from ..extractors.registry import load_architecture

    from .extract import model_kwargs

    kw = model_kwargs(args)
    checkpoint, trust = kw.pop("checkpoint"), kw.pop("trust_checkpoint")
    kw.pop("random_init")
    model = load_architecture(args.model, checkpoint, trust, **kw)
    shapes = model.block_shapes(args.image_size)
    c, h, w = model.input_shape
    if args.image_size:
        h = w = args.image_size
    print(f"{model.name}: {len(shapes)} blocks, input {(c, h, w)}")
    width = max([20] + [len(name) for _, name, _ in shapes])  # SD's names run to 30
    print(f"{'id':>4}  {'block':<{width}} output shape (C, H, W) or (tokens, D)")
    for i, name, shape in shapes:
        print(f"{i:>4}  {name:<{width}} {shape}")
    return 0
