"""Where every family's weights come from: the one weights loader.

* Released weights: :func:`released` (the checkpoint given, else the registry entry's URL,
  else the one-line "no released weights" error), :func:`fetch_url` (torch hub's cache) and
  :func:`hub_snapshot` (the Hugging Face hub, failing at once offline); :func:`fetched`
  turns a library's own download (timm, torchvision, diffusers) into the same error.
* Reading them: :func:`read` (a state dict, a local file or a URL -> its contents),
  :func:`read_state_dict`, :func:`state_dict_from` and :func:`load_into` (a strict load
  whose misfit is named in one line).

Checkpoints are unpickled with ``torch.load(weights_only=True)``: a file that needs
arbitrary code to load is refused unless the user trusts it explicitly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch

from ..errors import ProbeError
from ..files import atomic_json

# Hashing a released checkpoint (GBs) costs seconds on every extraction, so file digests
# are cached by (path, size, mtime, inode); below this size hashing is cheaper than the cache.
CACHE_MIN_BYTES = 16 << 20


T = TypeVar("T")
ErrorFactory = Callable[[BaseException], Exception]


def cache_dir() -> str:
    """Where probe keeps what it can recompute: ``$XDG_CACHE_HOME/probe`` (~/.cache/probe)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "probe")


def sha256(path: str, chunk: int = 1 << 20) -> str:
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


def _file_sha256(path: str, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_cache(path: str) -> dict:
    try:
        with open(path) as fh:
            cache = json.load(fh)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def load_file(path: str, trust_checkpoint: bool = False) -> Any:
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


def _unreadable(path: str, e: BaseException, trusted: bool) -> ProbeError:
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
    detail = first_line(e)
    if detail.startswith("Weights only load failed") or isinstance(e, (KeyError, IndexError)):
        detail = f"it starts with {head[:12]!r}"  # torch's text is about trusting, not damage
    return ProbeError(f"cannot read checkpoint {path}: it {what} ({detail.split('. ')[0]}); "
                      "download or save it again")


def state_dict_from(obj: Any, path: str = "checkpoint") -> dict[str, torch.Tensor]:
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


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
              what: str = "checkpoint", arch: str = "the architecture") -> None:
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


# ---- where the weights come from ------------------------------------------------------

def released(name: str, spec: Mapping[str, Any], checkpoint: Any, accepted: str) -> Any:
    """The checkpoint to load: the one given, else the registry entry's released ``url``;
    with neither, the one-line "no released weights" error (``accepted``: what
    ``--checkpoint`` takes for this family)."""
    if checkpoint is not None:
        return checkpoint
    if spec.get("url"):
        return spec["url"]
    raise no_released_weights(name, accepted, family=name == spec.get("family"))


def no_released_weights(name: str, accepted: str, family: bool = False) -> ProbeError:
    """The error of a model (or of a bare ``family``) that has no weights to download."""
    what = f"the {name} family has no released weights" if family \
        else f"{name} has no released weights"
    return ProbeError(f"{what}: pass a checkpoint "
                      f"(--checkpoint PATH, API checkpoint=...: {accepted}) or --random-init "
                      "(API random_init=True) for an untrained baseline")


def is_url(text: Any) -> bool:
    """Whether a checkpoint given as text is a download address."""
    return isinstance(text, str) and text.startswith(("http://", "https://"))


def read(checkpoint: Any, trust_checkpoint: bool = False,
         hint: str = "give a local .pt file or an https:// URL") -> tuple[Any, str]:
    """A checkpoint as given -> ``(its contents, where they came from)``: a mapping (a
    loaded checkpoint) as it is, a local file through :func:`load_file`, an http(s) URL
    through :func:`fetch_url`.  A path that is none of these is a one-line error (``hint``:
    what to give instead)."""
    if isinstance(checkpoint, Mapping):
        return checkpoint, "state dict"
    source = os.fspath(checkpoint)
    if os.path.isdir(source):
        raise ProbeError(f"{source} is a folder, not a checkpoint file ({hint})")
    if os.path.exists(source):
        return load_file(source, trust_checkpoint), os.path.abspath(source)
    if is_url(source):
        return fetch_url(source), source
    raise ProbeError(f"checkpoint not found: {source} ({hint})")


def read_state_dict(checkpoint: Any, trust_checkpoint: bool = False,
                    hint: str = "give a local .pt file or an https:// URL"
                    ) -> tuple[dict[str, torch.Tensor], str]:
    """:func:`read`, then the model weights inside (:func:`state_dict_from`)."""
    obj, source = read(checkpoint, trust_checkpoint, hint)
    what = "the given state dict" if source == "state dict" else source
    return state_dict_from(obj, what), source


def fetch_url(url: str, filename: str | None = None) -> Any:
    """Download (or reuse from the torch hub cache) a released checkpoint file."""
    try:
        # the progress bar only where someone watches: in logs its lines would break the
        # one-line error that follows a failed download
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", file_name=filename,
                                                  progress=sys.stderr.isatty(), weights_only=True)
    except Exception as e:  # no network, proxy, 404 ...
        raise no_weights_error(url, e) from e


def hub_snapshot(repo_id: str, patterns: Iterable[str], error: ErrorFactory | None = None,
                 source: str | None = None) -> str:
    """The files of a Hugging Face hub repo that match ``patterns``, from the cache or the
    hub; returns the local folder.  Offline this fails at once, where the libraries' own
    downloads retry for up to a minute.  A failure is ``error(exc)`` if given, else the
    one-line :func:`no_weights_error` naming ``source`` (default: the repo id)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=list(patterns))
    except Exception as e:  # offline, no such repo, gated ...
        raise (error or (lambda exc: no_weights_error(source or repo_id, exc)))(e) from e


def fetched(download: Callable[[], T], source: str, error: ErrorFactory | None = None) -> T:
    """``download()`` (a library's own loader that may go to the network: timm's
    ``pretrained=True``, torchvision's weights, diffusers' ``from_pretrained``), its failure
    turned into ``error(exc)`` or the one-line :func:`no_weights_error` naming ``source``.
    A ProbeError passes through."""
    try:
        return download()
    except ProbeError:
        raise
    except Exception as e:  # no network, proxy, 404 ...
        raise (error or (lambda exc: no_weights_error(source, exc)))(e) from e


def no_weights_error(source: str, exc: BaseException) -> ProbeError:
    """The one-line error of weights that could not be downloaded, and what to do."""
    return ProbeError(
        f"could not fetch weights from {source} ({first_line(exc)}): download them on a machine "
        "with internet and pass --checkpoint PATH, or use --random-init for an untrained baseline")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none): a
    library's multi-line advice inside our one-line errors."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
