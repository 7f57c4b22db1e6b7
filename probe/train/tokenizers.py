"""The l-DAE's first stage: fitting or training its tokenizer, and tokenizer files.

- ``pca``: the eigendecomposition of ``patches`` random training patches (``.pca``).
- ``patch-ae`` / ``patch-vae``: Adam on minibatches of the same random patches, loss
  ``||x - x_hat||^2 / D`` per patch (+ ``kl_weight`` x KL(q(z|x) || N(0, I)) / D for the
  VAE, z sampled by reparameterisation).  The patch mean is fixed first, as PCA's.
- ``conv-vae``: Adam on minibatches of whole training images, the same loss per image
  (/ number of pixels).

Everything random derives from ``seed``.  ``probe train tokenizer`` writes a tokenizer
alone (``save_tokenizer``); ``probe train ldae --tokenizer-checkpoint`` reads it back.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ProbeError
from ..files import atomic_torch_save
from .pca import fit_patch_pca, sample_patches

if TYPE_CHECKING:
    from ..extractors.ldae.tokenizer import Tokenizer

FORMAT = "probe-ldae-tokenizer"
VERSION = 1
# The config entries a tokenizer file must share with the l-DAE that uses it.
SHAPE_KEYS = ("tokenizer", "in_channels", "image_size", "patch_size", "latent_dim",
              "tokenizer_width")
DEFAULTS: dict[str, Any] = dict(steps=None, batch_size=None, lr=None, kl_weight=0.1)
PATCH_DEFAULTS: dict[str, Any] = dict(steps=2000, batch_size=1024, lr=3e-3)
CONV_DEFAULTS: dict[str, Any] = dict(steps=500, batch_size=32, lr=2e-3)


def options(kind: str, **given: Any) -> dict[str, Any]:
    """The training options of a tokenizer kind: the given ones, else its defaults."""
    base = CONV_DEFAULTS if kind == "conv-vae" else PATCH_DEFAULTS
    out = dict(DEFAULTS, **{k: v for k, v in base.items()})
    out.update({k: v for k, v in given.items() if v is not None})
    if out["steps"] < 0 or out["batch_size"] < 1 or not out["lr"] > 0 or out["kl_weight"] < 0:
        raise ProbeError("tokenizer training needs --tokenizer-steps >= 0, "
                         "--tokenizer-batch-size >= 1, --tokenizer-lr > 0 and --kl-weight >= 0")
    return out


def fit_tokenizer(tok: Any, images: Any, to_pixels: Callable[[torch.Tensor], torch.Tensor], *,
                  patches: int = 50000, seed: int = 0, steps: int | None = None,
                  batch_size: int | None = None, lr: float | None = None,
                  kl_weight: float | None = None, progress: bool = False) -> dict[str, Any]:
    """Fit (PCA) or train (the others) ``tok`` on ``images`` (indexable by index arrays,
    in [0, 1]); ``to_pixels`` maps them to the tokenizer's space.  Returns what was done
    (recorded in the l-DAE checkpoint's meta)."""
    start = time.perf_counter()
    meta: dict[str, Any] = {"kind": tok.kind, "seed": seed}
    if tok.kind == "pca":
        mean, comps, var = fit_patch_pca(images, tok.patch_size, patches, seed, to_pixels)
        tok.set_basis(mean.float(), comps.float(), var.float())
        meta["patches"] = patches
    else:
        opts = options(tok.kind, steps=steps, batch_size=batch_size, lr=lr,
                       kl_weight=kl_weight)
        meta.update(opts)
        if tok.kind == "conv-vae":
            curve = _train_conv(tok, images, to_pixels, seed, opts, progress)
        else:
            sample = sample_patches(images, tok.patch_size, patches, seed, to_pixels).float()
            sample = sample.to(tok.mean.device)  # once: every step draws its batch from it
            tok.mean.copy_(sample.mean(0))
            meta["patches"] = patches
            curve = _train_patches(tok, sample, seed, opts, progress)
        meta["loss"] = curve
        meta["final_recon"] = curve[-1]["recon"] if curve else None
    meta["latent_std"] = _latent_std(tok, images, to_pixels, seed)
    meta["wall_time_s"] = round(time.perf_counter() - start, 1)
    return meta


def _steps(tok, opts, batch, seed, progress):
    """Adam on ``batch(step, generator) -> (recon, kl)``; returns the loss curve."""
    from tqdm.auto import tqdm

    params = [p for p in tok.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=opts["lr"])
    generator = torch.Generator().manual_seed(seed)
    curve, every = [], max(1, opts["steps"] // 20)
    tok.train()
    for step in tqdm(range(1, opts["steps"] + 1), desc=f"training the {tok.kind} tokenizer",
                     unit="step", disable=not progress, leave=False):
        recon, kl = batch(step, generator)
        loss = recon + opts["kl_weight"] * kl
        if not torch.isfinite(loss):
            raise ProbeError(f"the tokenizer loss became {loss.item()} at step {step}: lower "
                             "--tokenizer-lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == opts["steps"]:
            curve.append({"step": step, "recon": recon.item(), "kl": float(kl.detach())})
    tok.eval().requires_grad_(False)
    return curve


def _train_patches(tok, patches, seed, opts, progress):
    def batch(step, generator):
        idx = torch.randint(0, len(patches), (opts["batch_size"],), generator=generator)
        return tok.losses(patches[idx.to(patches.device)], generator)

    return _steps(tok, opts, batch, seed, progress)


def _train_conv(tok, images, to_pixels, seed, opts, progress):
    device = next(tok.parameters()).device

    def batch(step, generator):
        idx = torch.randint(0, len(images), (opts["batch_size"],), generator=generator)
        return tok.losses(to_pixels(images[idx]).to(device), generator)

    return _steps(tok, opts, batch, seed, progress)


@torch.no_grad()
def _latent_std(tok, images, to_pixels, seed, n=512):
    """Standard deviation of each latent coordinate over n training images: the scale the
    noise (sigma up to sigma_max) is added at."""
    idx = np.random.default_rng([seed, 0x57D]).integers(0, len(images), min(n, len(images)))
    device = next(iter(list(tok.buffers()) + list(tok.parameters()))).device
    z = tok.encode(to_pixels(images[torch.as_tensor(idx)]).to(device))
    return [round(v, 4) for v in z.flatten(0, 1).std(0).tolist()]


# ---- tokenizer files -----------------------------------------------------------------------
def tokenizer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in SHAPE_KEYS}


def save_tokenizer(tok: Tokenizer, config: Mapping[str, Any], meta: Mapping[str, Any], path: str
                   ) -> None:
    atomic_torch_save({"format": FORMAT, "version": VERSION, "config": tokenizer_config(config),
                       "state": {k: v.detach().cpu().clone()
                                 for k, v in tok.state_dict().items()},
                       "meta": dict(meta)}, path)


def load_tokenizer(tok: Tokenizer, config: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Load the tokenizer file ``path`` into ``tok`` (of the l-DAE ``config``); returns its
    meta.  A file made for another shape is refused with the option that differs."""
    from ..extractors.weights import load_file, load_into

    obj = load_file(path)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        raise ProbeError(f"{path} is not a tokenizer file (no 'format': '{FORMAT}' entry); "
                         "write one with `probe train tokenizer`")
    if obj.get("version", 0) > VERSION:
        raise ProbeError(f"{path} was written by a newer probe: upgrade probe")
    want = tokenizer_config(config)
    for key, value in want.items():
        have = obj["config"].get(key)
        if have != value and not (key == "tokenizer_width" and want["tokenizer"] != "conv-vae"):
            raise ProbeError(f"the tokenizer in {path} has {key}={have!r}, this l-DAE "
                             f"{key}={value!r}: train the tokenizer with the same options")
    load_into(tok, obj["state"], what=str(path), arch=f"a {tok.kind} tokenizer")
    return dict(obj.get("meta") or {}, file=str(path))


__all__ = ["fit_tokenizer", "load_tokenizer", "options", "save_tokenizer",
           "tokenizer_config"]
