"""Reading checkpoints safely and fitting them to an architecture.

Checkpoints are unpickled with ``torch.load(weights_only=True)``: a file that needs
arbitrary code to load is refused unless the user trusts it explicitly.
"""
import hashlib
import os
import pickle

import torch

from ..errors import ProbeError


def sha256(path, chunk=1 << 20):
    if os.path.isdir(path):
        h = hashlib.sha256()
        for root, _, files in sorted(os.walk(path)):
            for f in sorted(files):
                p = os.path.join(root, f)
                h.update(os.path.relpath(p, path).encode())
                h.update(sha256(p).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_file(path, trust_checkpoint=False):
    """torch.load a local checkpoint on the CPU, weights only unless trusted."""
    if not os.path.exists(path):
        raise ProbeError(f"checkpoint not found: {path}")
    if not os.access(path, os.R_OK):
        raise ProbeError(f"checkpoint is not readable: {path} (check its permissions)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        if trust_checkpoint:
            raise ProbeError(f"cannot read checkpoint {path}: {_first_line(e)}") from e
        raise ProbeError(
            f"{path} needs arbitrary unpickling to load, which can run code: pass "
            "--trust-checkpoint (API: trust_checkpoint=True) only if you trust its source") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ProbeError(f"cannot read checkpoint {path}: {_first_line(e)} "
                         "(is it a complete PyTorch checkpoint?)") from e


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
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", file_name=filename,
                                                  progress=True, weights_only=True)
    except Exception as e:  # no network, proxy, 404 ...
        raise no_weights_error(url, e) from e


def no_weights_error(source, exc):
    return ProbeError(
        f"could not fetch weights from {source} ({_first_line(exc)}): download them on a machine "
        "with internet and pass --checkpoint PATH, or use --random-init for an untrained baseline")


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
