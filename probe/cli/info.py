"""`probe info FILE`: how a feature file was made, and what it holds."""
import argparse
import json
import os
from typing import Any

from ..errors import ProbeError
from .common import add_selection, selection

HIDDEN = ("format", "complete", "settings", "noise_levels")  # the table is printed below


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print how a feature file was made and what it holds",
                       description="Print a feature file's settings and its (t, block) keys with "
                                   "their block ids; --t/--blocks/--keys list only those keys.")
    p.add_argument("file")
    add_selection(p, what=" to list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..selection import key_label
    from ..store import open_features

    path = args.file
    if not os.path.exists(path):
        partial = f"{path}.partial"
        if os.path.isdir(partial):
            n = len(os.listdir(os.path.join(partial, "parts")))
            print(f"{path}: not written yet; {partial} holds an unfinished run ({n} parts): "
                  "re-run the same `probe extract` command to finish it")
            return 0
        raise ProbeError(f"file not found: {path}")
    with open_features(path, require_complete=False) as f:
        keys = f.select(*selection(args))
        print(f"{path}  ({os.path.getsize(path) / 2**20:.1f} MiB)")
        print(f"  status: {'complete' if f.complete else 'INCOMPLETE'}")
        for k in sorted(f.attrs):
            if k not in HIDDEN:
                print(f"  {k}: {_text(f, k)}")
        _noise(f)
        print("  features:")
        for t, block in keys:
            ds = f.dataset((t, block))
            print(f"    {key_label((t, block))}: {ds.shape} {ds.dtype}{_id(f, block)}")
        names = f.class_names
        print(f"  classes ({len(names)}): {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    return 0


def _noise(f: Any) -> None:
    """The noise per t: x_t = alpha_t x_0 + sigma_t eps, log-SNR = log(alpha_t^2/sigma_t^2)."""
    from ..selection import t_text

    levels = f.noise_levels()
    if levels:
        print("  noise_levels: per t, x_t = alpha x_0 + sigma eps")
        print(f"    {'t':>10} {'alpha':>10} {'sigma':>10} {'log-SNR':>10}")
        for t, v in sorted(levels.items()):
            print(f"    {t_text(t):>10} {v['alpha']:>10.5g} {v['sigma']:>10.5g} "
                  f"{v['logsnr']:>10.5g}")


def _id(f, block):
    if f.model_blocks and block in f.model_blocks:
        return f"  (block {f.model_blocks.index(block) + 1})"
    return ""


def _text(f, k):
    """An attribute as text; block lists with the ids that --blocks takes."""
    from ..selection import block_list

    v = f.attrs[k]
    if k == "model_blocks" and v:
        return block_list(v)
    if k == "blocks" and f.model_blocks:
        return ", ".join(f"{b} ({f.model_blocks.index(b) + 1})" for b in v if b in f.model_blocks)
    return json.dumps(v) if isinstance(v, (dict, list)) else v
