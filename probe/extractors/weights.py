"""Reading checkpoints safely and fitting them to an architecture.

Checkpoints are unpickled with ``torch.load(weights_only=True)``: a file that needs
arbitrary code to load is refused unless the user trusts it explicitly.
"""
import contextlib
import hashlib
import json
import os
import pickle
import sys
import warnings

import torch

from ..errors import ProbeError
from ..files import atomic_json

# Hashing a released checkpoint (GBs) costs seconds on every extraction, so file digests
# are cached by (path, size, mtime, inode); below this size hashing is cheaper than the cache.
CACHE_MIN_BYTES = 16 << 20


def cache_dir():
    """Where probe keeps what it can recompute: ``$XDG_CACHE_HOME/probe`` (~/.cache/probe)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "probe")


def sha256(path, chunk=1 << 20):
    """The hex sha256 of a file, or of a folder (its files' relative paths and digests)."""
    if os.path.isdir(path):
        h = hashlib.sha256()
        for root, _, files in sorted(os.walk(path)):
            for f in sorted(files):
                p = os.path.join(root, f)
                h.update(os.path.relpath(p, path).encode())
                h.update(sha256(p).encode())
        return h.hexdigest()
    path = os.path.abspath(path)
    st = os.stat(path)
    if st.st_size < CACHE_MIN_BYTES:
        return _file_sha256(path, chunk)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    cache_file = os.path.join(cache_dir(), "sha256.json")
    cache = _read_cache(cache_file)
    hit = cache.get(path)
    if isinstance(hit, list) and len(hit) == 4 and hit[:3] == stamp:
        return hit[3]
    digest = _file_sha256(path, chunk)
    cache = {p: v for p, v in cache.items() if os.path.exists(p)}  # forget deleted files
    cache[path] = stamp + [digest]
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a hash
        atomic_json(cache, cache_file)
    return digest


def _file_sha256(path, chunk):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_cache(path):
    try:
        with open(path) as fh:
            cache = json.load(fh)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def load_file(path, trust_checkpoint=False):
    """torch.load a local checkpoint on the CPU, weights only unless trusted."""
    if not os.path.exists(path):
        raise ProbeError(f"checkpoint not found: {path}")
    if not os.access(path, os.R_OK):
        raise ProbeError(f"checkpoint is not readable: {path} (check its permissions)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's multi-line advice; ours is one line
            return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except MemoryError:
        raise
    except Exception as e:  # the unpickler raises KeyError, IndexError ... on junk
        raise _unreadable(path, e, trust_checkpoint) from e


def _unreadable(path, e, trusted):
    """Why a file did not load, and what to do: only a real pickle that refers to code is
    sent to --trust-checkpoint; a broken or wrong file is named as such."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"version https://git-lfs"):
        return ProbeError(f"{path} is a git-lfs pointer, not the weights: fetch the file itself "
                          "(git lfs pull) and try again")
    if head.lstrip().startswith(b"<"):
        return ProbeError(f"{path} is an HTML page, not a checkpoint (a failed download?): "
                          "download the weights again")
    if not trusted and "Unsupported global" in str(e):
        return ProbeError(
            f"{path} needs arbitrary unpickling to load, which can run code: pass "
            "--trust-checkpoint (API: trust_checkpoint=True) only if you trust its source")
    if not trusted and head.startswith(b"\x80") and isinstance(e, pickle.UnpicklingError):
        return ProbeError(
            f"{path} is a plain pickle that weights-only loading cannot read: pass "
            "--trust-checkpoint (API: trust_checkpoint=True) only if you trust its source")
    zip_or_pickle = head.startswith(b"PK") or head.startswith(b"\x80")
    what = "is damaged or incomplete" if zip_or_pickle else "is not a PyTorch checkpoint"
    detail = _first_line(e)
    if detail.startswith("Weights only load failed") or isinstance(e, (KeyError, IndexError)):
        detail = f"it starts with {head[:12]!r}"  # torch's text is about trusting, not damage
    return ProbeError(f"cannot read checkpoint {path}: it {what} ({detail.split('. ')[0]}); "
                      "download or save it again")


def state_dict_from(obj, path="checkpoint"):
    """The model weights inside a loaded checkpoint: a plain state dict, or the one under
    'ema' (DiT train.py), 'model' or 'state_dict'."""
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return state_dict_from(obj[key], path)
    raise ProbeError(f"{path} holds no state dict (expected tensors, or one under 'ema', "
                     "'model' or 'state_dict')")


def load_into(module, state_dict, what="checkpoint", arch="the architecture"):
    """load_state_dict(strict=True), but a misfit names its first mismatches in one line."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:2])})")
    if problems:
        raise ProbeError(f"{what} does not fit {arch}: " + "; ".join(problems)
                         + ". Check the model name or its config flags")
    module.load_state_dict(state_dict, strict=True)


def fetch_url(url, filename=None):
    """Download (or reuse from the torch hub cache) a released checkpoint file."""
    try:
        # the progress bar only where someone watches: in logs its lines would break the
        # one-line error that follows a failed download
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", file_name=filename,
                                                  progress=sys.stderr.isatty(), weights_only=True)
    except Exception as e:  # no network, proxy, 404 ...
        raise no_weights_error(url, e) from e


def no_weights_error(source, exc):
    return ProbeError(
        f"could not fetch weights from {source} ({_first_line(exc)}): download them on a machine "
        "with internet and pass --checkpoint PATH, or use --random-init for an untrained baseline")


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
