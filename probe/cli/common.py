"""Flags that mean the same thing in every command, defined once.

Feature selection (``--t``, ``--blocks``, ``--keys``) follows :mod:`probe.selection`.
Run flags: ``--quiet`` (no progress bars), ``--device``, ``--threads``, ``--seed``,
``--out``, ``--overwrite`` (replace an existing output; without it an existing output is
refused, or a matching unfinished run resumed), ``--batch-size`` and ``--num-workers``.
Old spellings stay as hidden aliases.  :func:`run_options` and :func:`output_options` turn
them into the option objects of :mod:`probe.options` that the Python API takes.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Sequence, Union

from ..errors import ProbeError
from ..options import OutputOptions, RunOptions

Parser = Union[argparse.ArgumentParser, "argparse._ArgumentGroup"]

T_HELP = ("timesteps: a value (DDPM steps such as 100; SiT/REPA's continuous t in [0, 1] "
          "such as 0.1), a comma list (10,100), repeated --t, or all")
BLOCKS_HELP = ("blocks: names or 1-based ids from `probe blocks MODEL` (ids count in the "
               "model's full block list, as recorded in the file), a comma list, repeated "
               "--blocks, or all")
LOGSNR_HELP = ("instead of --t: log-SNR log(alpha_t^2/sigma_t^2), the one noise axis across "
               "families; a discrete t takes the step of nearest log-SNR (logged), a "
               "continuous t the exact one; a comma list or repeated --logsnr")
KEYS_HELP = ("explicit keys tT/BLOCK (BLOCK a name or id), tT (every block at T) or BLOCK "
             "(that block at every t); instead of --t/--blocks")


def add_selection(p: argparse.ArgumentParser, *, t_default: str = "all", keys: bool = True,
                  suffix: str = "", what: str = "") -> None:
    """--t, --blocks (alias --block) and --keys; ``suffix`` '-b' gives a second file's.
    Unset flags are None (argparse would append to a list default)."""
    dest = suffix.replace("-", "_")
    g = p.add_argument_group(f"which features{what}")
    g.add_argument(f"--t{suffix}", dest=f"t{dest}", action="append", metavar="T",
                   help=f"{T_HELP} (default {t_default})")
    g.add_argument(f"--logsnr{suffix}", dest=f"logsnr{dest}", action="append", metavar="X",
                   help=LOGSNR_HELP)
    g.add_argument(f"--blocks{suffix}", dest=f"blocks{dest}", action="append",
                   metavar="BLOCKS", help=BLOCKS_HELP + " (default all)")
    g.add_argument(f"--block{suffix}", dest=f"blocks{dest}", action="append", help=argparse.SUPPRESS)
    if keys:
        g.add_argument(f"--keys{suffix}", dest=f"keys{dest}", action="extend", nargs="+",
                       metavar="KEY", help=KEYS_HELP)


def selection(args: argparse.Namespace, suffix: str = "") -> tuple[Any, Any, Any]:
    """(t, blocks, keys) as given on the command line (None: not given); ``--logsnr`` comes
    as t, a :class:`~probe.selection.LogSNR`."""
    t, blocks, keys = (getattr(args, name + suffix, None) for name in ("t", "blocks", "keys"))
    logsnr = getattr(args, "logsnr" + suffix, None)
    if logsnr is not None:
        from ..selection import LogSNR

        if t is not None:
            raise ProbeError(f"give --t{suffix.replace('_', '-')} or "
                             f"--logsnr{suffix.replace('_', '-')}, not both")
        t = LogSNR.parse(logsnr)
    return t, blocks, keys


def add_quiet(p: Parser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def add_device(p: Parser, default: str | None = None) -> None:
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help="cpu, cuda, cuda:N or auto (default: "
                        f"{default or 'auto, cuda if available'})")


def add_threads(p: Parser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: one per core); on a shared machine, "
                        "fewer threads than cores avoids threads waiting on each other")


def add_seed(p: Parser, what: str, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=f"seeds {what} (default {default})")


def add_overwrite(p: Parser, what: str = "the output") -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} if it exists")


def add_batch_size(p: Parser, default: int | None, what: str = "samples per batch") -> None:
    p.add_argument("--batch-size", type=int, default=default,
                   help=f"{what} (default {default if default is not None else 'per head'})")


def add_precision(p: Parser) -> None:
    p.add_argument("--precision", default="fp32", metavar="fp32|bf16|fp16",
                   help="the network's forward under autocast in bf16/fp16 (VAE, timestep "
                        "embeddings and noise stay float32); features are stored in float32 "
                        "or --dtype (default fp32)")


def add_num_workers(p: Parser) -> None:
    p.add_argument("--num-workers", default="auto", metavar="N|auto",
                   help="processes decoding images (default auto: min(8, cores) on CUDA, "
                        "0 on the CPU: in the main process)")


def add_run_flags(p: argparse.ArgumentParser, *, seed_what: str | None = None,
                  seed_default: int = 0, device_default: str | None = None,
                  overwrite: str | None = None, batch_size: int | None | bool = False,
                  batch_what: str = "samples per batch", num_workers: bool = False) -> None:
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
    if num_workers:
        add_num_workers(g)
    add_quiet(g)


def run_options(args: Any, **given: Any) -> RunOptions:
    """The RunOptions of the shared run flags a command was given (flags it does not take
    keep the dataclass's defaults); ``given`` sets fields the command decides itself."""
    flags = dict(device=getattr(args, "device", None), threads=getattr(args, "threads", None),
                 batch_size=getattr(args, "batch_size", None),
                 num_workers=getattr(args, "num_workers", None),
                 progress=not getattr(args, "quiet", False))
    return RunOptions(**{k: v for k, v in {**flags, **given}.items() if v is not None})


def output_options(args: Any, **given: Any) -> OutputOptions:
    """The OutputOptions of --out, --overwrite and --dtype (those the command takes)."""
    flags = dict(out=getattr(args, "out", None), overwrite=getattr(args, "overwrite", None),
                 dtype=getattr(args, "dtype", None))
    return OutputOptions(**{k: v for k, v in {**flags, **given}.items() if v is not None})


def refuse_existing(paths: Sequence[str], overwrite: bool) -> None:
    """Without --overwrite, an output that exists is an error (nothing is written)."""
    found = [p for p in paths if os.path.exists(p)]
    if found and not overwrite:
        raise ProbeError(f"{found[0]} exists: pass --overwrite to replace it, or choose another "
                         "--out")


def safe_name(text: str) -> str:
    """``text`` as a file name: runs of anything but letters, digits, '.', '_' and '-'
    become one '_'."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)
