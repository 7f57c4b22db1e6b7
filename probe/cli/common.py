"""Flags that mean the same thing in every command, defined once.

Feature selection (``--t``, ``--blocks``, ``--keys``) follows :mod:`probe.selection`.
Run flags: ``--quiet`` (no progress bars), ``--device``, ``--threads``, ``--seed``,
``--out``, ``--overwrite`` (replace an existing output; without it an existing output is
refused, or a matching unfinished run resumed) and ``--batch-size``.  Old spellings stay
as hidden aliases.
"""
import argparse
import os

from ..errors import ProbeError

T_HELP = ("timesteps: a value (DDPM steps such as 100; SiT/REPA's continuous t in [0, 1] "
          "such as 0.1), a comma list (10,100), repeated --t, or all")
BLOCKS_HELP = ("blocks: names or 1-based ids from `probe blocks MODEL` (ids count in the "
               "model's full block list, as recorded in the file), a comma list, repeated "
               "--blocks, or all")
KEYS_HELP = ("explicit keys tT/BLOCK (BLOCK a name or id), tT (every block at T) or BLOCK "
             "(that block at every t); instead of --t/--blocks")


def add_selection(p, *, t_default="all", keys=True, suffix="", what=""):
    """--t, --blocks (alias --block) and --keys; ``suffix`` '-b' gives a second file's.
    Unset flags are None (argparse would append to a list default)."""
    dest = suffix.replace("-", "_")
    g = p.add_argument_group(f"which features{what}")
    g.add_argument(f"--t{suffix}", dest=f"t{dest}", action="append", metavar="T",
                   help=f"{T_HELP} (default {t_default})")
    g.add_argument(f"--blocks{suffix}", dest=f"blocks{dest}", action="append",
                   metavar="BLOCKS", help=BLOCKS_HELP + " (default all)")
    g.add_argument(f"--block{suffix}", dest=f"blocks{dest}", action="append", help=argparse.SUPPRESS)
    if keys:
        g.add_argument(f"--keys{suffix}", dest=f"keys{dest}", action="extend", nargs="+",
                       metavar="KEY", help=KEYS_HELP)


def selection(args, suffix=""):
    """(t, blocks, keys) as given on the command line (None: not given)."""
    return tuple(getattr(args, name + suffix, None) for name in ("t", "blocks", "keys"))


def add_quiet(p):
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def add_device(p, default=None):
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help="cpu, cuda, cuda:N or auto (default: "
                        f"{default or 'auto, cuda if available'})")


def add_threads(p):
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: one per core); on a shared machine, "
                        "fewer threads than cores avoids threads waiting on each other")


def add_seed(p, what, default=0):
    p.add_argument("--seed", type=int, default=default, help=f"seeds {what} (default {default})")


def add_overwrite(p, what="the output"):
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} if it exists")


def add_batch_size(p, default, what="samples per batch"):
    p.add_argument("--batch-size", type=int, default=default,
                   help=f"{what} (default {default if default is not None else 'per head'})")


def add_run_flags(p, *, seed_what=None, seed_default=0, device_default=None, overwrite=None,
                  batch_size=False, batch_what="samples per batch"):
    """The run flags a command takes (each of the same meaning everywhere)."""
    g = p.add_argument_group("run")
    add_device(g, device_default)
    add_threads(g)
    if seed_what:
        add_seed(g, seed_what, seed_default)
    if overwrite:
        add_overwrite(g, overwrite)
    if batch_size is not False:
        add_batch_size(g, batch_size, batch_what)
    add_quiet(g)


def refuse_existing(paths, overwrite):
    """Without --overwrite, an output that exists is an error (nothing is written)."""
    found = [p for p in paths if os.path.exists(p)]
    if found and not overwrite:
        raise ProbeError(f"{found[0]} exists: pass --overwrite to replace it, or choose another "
                         "--out")
