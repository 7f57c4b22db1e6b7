"""Stream block features of a diffusion model over a dataset into one HDF5 file.

A run works in a sibling folder ``OUT.partial/`` (:mod:`.workdir`): ``settings.json`` (what
is being computed), a ``lock`` held while a process writes, and ``parts/*.npz``, one file
per batch (:mod:`.loop`), each landing whole, so a killed run leaves only whole parts.
Re-running the same command skips the samples already in parts; once every sample is done,
the parts are streamed into a temporary file, marked complete and renamed to ``OUT``
(:mod:`.merge`).  Memory is bounded by one batch (plus one part while merging).
"""
from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..data import load_dataset
from ..device import resolve_device
from ..errors import ProbeError
from ..extractors.weights import sha256
from .pooling import parse_pool
from ..precision import check_device, keep_fp32, parse_precision
from ..selection import Spec, parse_t
from ..version import __version__
from .gpu import compiled, resolve_num_workers, use_channels_last
from .loop import DTYPES, run_batches
from .merge import assemble, summary
from .workdir import Workdir, check_out

if TYPE_CHECKING:
    from ..extractors.base import Extractor

__all__ = ["extract", "weights_sha256"]


def weights_sha256(model):
    """A hash of every weight the features depend on (network and VAE).

    Hashing a large model takes seconds, so the digest is kept on the model and reused
    while every tensor has the same storage and version counter: loading weights, an
    optimizer step or any other in-place change bumps the counter.  (Writing through
    ``.data`` does not: hash again after such a change by deleting ``model._weights_sha256``.)
    """
    state = sorted(model.state_dict().items())
    stamp = [(k, v.data_ptr(), v._version) for k, v in state]
    cached = getattr(model, "_weights_sha256", None)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    for k, v in state:
        h.update(k.encode())
        if v.numel():  # hashed through the buffer, without a copy of the bytes
            # flat first: a 0-dim tensor (BatchNorm's step count) has no byte view
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    model._weights_sha256 = (stamp, h.hexdigest())
    return model._weights_sha256[1]


def extract(model: str | Extractor, data: str | Any = "demo", t: Spec = None,
            blocks: Spec = "all", out: str | os.PathLike | None = None, *,
            split: str = "train", pool: str = "mean", dtype: str = "float32",
            noise_seed: int = 0, ensemble: int = 1, add_noise: bool = True,
            class_label: int | str | None = None, batch_size: int = 32,
            num_workers: int | str = "auto",
            device: str | torch.device | None = None, overwrite: bool = False,
            skip_bad: bool = False, limit: int | None = None, stack_t: bool = False,
            progress: bool = True, log: Callable[[str], Any] = print,
            command: str | None = None, precision: str = "fp32", compile: bool = False,
            **model_kwargs: Any) -> str:
    """Extract features of ``blocks`` at timesteps ``t`` for every image of ``data`` into
    the HDF5 file ``out`` (see :mod:`probe.store`).  Returns the path.

    ``t``: default 100 for diffusion models; a network without timesteps (timm,
    torchvision) takes none (then ``ensemble`` must be 1 and ``add_noise`` stays True).
    ``model``: an Extractor or a model name (then ``model_kwargs`` go to load_model).
    ``data``: a dataset spec (``demo``, ``fashion-mnist``, ``imagefolder:ROOT`` ...) or a
    dataset from :func:`probe.data.load_dataset`.  ``add_noise=False`` conditions on t
    without noising (the l-DAE paper's clean-input probe).  ``class_label``: None for the
    model's null class, an int for one class, or "true" to feed the true labels.
    ``precision``: fp32, or bf16/fp16 autocast for the network's forward (the VAE, the
    timestep embeddings and the noising stay float32; :mod:`probe.precision`).
    ``num_workers``: DataLoader workers, ``auto`` for min(8, cores) on CUDA and 0 on CPU.
    ``compile``: torch.compile the blocks (costs compile time on the first batch).
    """
    from ..extractors.registry import load_model

    pool = parse_pool(pool)
    device = resolve_device(device)
    num_workers = resolve_num_workers(num_workers, device)
    _check_options(batch_size, ensemble, num_workers, dtype)
    precision = parse_precision(precision)
    check_device(precision, device)
    if isinstance(model, str):
        model = load_model(model, device=device, **model_kwargs)
    model = model.to(device).eval()
    for module in model.fp32_modules().values():
        keep_fp32(module)
    channels_last = use_channels_last(model, device)
    ts = _timesteps(model, t, ensemble, add_noise)
    names = sorted(model.resolve_blocks(blocks), key=model.block_names.index)  # forward order
    if isinstance(data, str):
        data = load_dataset(data, split, model.data_size, model.image_channels,
                            model.data_interpolation)
    model.use_class_names(data.class_names)  # embeds a {class} prompt per class, before hashing
    n_total = len(data) if limit is None else min(int(limit), len(data))
    if n_total <= 0:
        raise ProbeError("nothing to extract: the dataset (or --limit) has zero images")
    if class_label not in (None, "true"):
        class_label = int(class_label)
    out = os.fspath(out) if out else f"{model.name}-{data.spec.split(':')[0]}-{data.split}.h5"
    settings = _settings(model, data, n_total, ts, names, pool=pool, dtype=dtype,
                         noise_seed=noise_seed, ensemble=ensemble, add_noise=add_noise,
                         class_label=class_label, skip_bad=skip_bad, precision=precision)
    with compiled(model, compile):
        _run(model, data, out, settings, overwrite=overwrite, batch_size=batch_size,
             num_workers=num_workers, device=device, stack_t=stack_t, progress=progress,
             log=log, command=command,
             speed=dict(compile=bool(compile), channels_last=channels_last,
                        num_workers=num_workers))
    return out


def _timesteps(model, t, ensemble, add_noise):
    """The timesteps to extract, checked against the model: [] for a network without
    timesteps, which refuses every option about noise."""
    if not model.has_timesteps:
        why = f"{model.name} has no timestep (it sees the clean image)"
        if t is not None:
            raise ProbeError(f"{why}: drop --t")
        if int(ensemble) != 1:
            raise ProbeError(f"{why} and no noise to average over: drop --ensemble")
        if not add_noise:
            raise ProbeError(f"{why}: drop --no-noise, its input is already clean")
        return []
    ts = parse_t(100 if t is None else t)
    if ts is None:
        raise ProbeError("--t all: name the timesteps to extract (each costs a forward pass), "
                         "e.g. --t 10,100,500")
    for tt in ts:
        model.schedule.check_t(tt)
    return ts


def _check_options(batch_size, ensemble, num_workers, dtype):
    if batch_size is None or int(batch_size) < 1:
        raise ProbeError(f"--batch-size must be a positive integer, not {batch_size}")
    if int(ensemble) < 1:
        raise ProbeError(f"--ensemble must be at least 1, not {ensemble}")
    if num_workers is None or int(num_workers) < 0:
        raise ProbeError(f"--num-workers must be 0 or more, not {num_workers}")
    if dtype not in DTYPES:
        raise ProbeError(f"bad --dtype {dtype!r}: use float16 or float32")


def _settings(model, data, n_total, ts, names, *, pool, dtype, noise_seed, ensemble, add_noise,
              class_label, skip_bad, precision):
    """What the features depend on: a run resumes only parts made with the same settings,
    and a complete file records them."""
    return {
        "model": model.name, "weights_sha256": weights_sha256(model),
        "timesteps": ts, "blocks": names, "pool": pool, "dtype": dtype,
        "noise_seed": int(noise_seed), "ensemble": int(ensemble), "add_noise": bool(add_noise),
        "class_label": class_label, "data": data.spec, "split": data.split,
        "num_samples": n_total, "image_size": model.image_size,
        "transform": f"{data.describe_transform()}; model input: {model.input_pipeline}",
        "skip_bad": bool(skip_bad),
        # bf16/fp16 features differ from fp32 ones in the 3rd digit: never resumed together
        "precision": precision,
    }


def _run(model, data, out, settings, *, overwrite, batch_size, num_workers, device, stack_t,
         progress, log, command, speed):
    """Extract this rank's shard into parts, then (rank 0) merge them into ``out``."""
    rank, world = _dist_info()
    work = Workdir(out)
    state = _on_rank0(lambda: check_out(out, settings, overwrite, work), rank, world)
    if state == "complete":
        log(f"{out} is already complete for these settings: nothing to do")
        return
    work.start(settings, rank)
    try:
        t0 = time.time()
        todo, shard_size = _todo(work, settings["num_samples"], batch_size, rank, world)
        left = sum(len(b) for b in todo)
        if left < shard_size:
            log(f"resuming: {shard_size - left} of {shard_size} images already done")
        keys = [(tt, b) for tt in settings["timesteps"] or [None] for b in settings["blocks"]]
        run_batches(model, data, todo, keys, work, settings, num_workers=num_workers,
                    device=device, stack_t=stack_t, progress=progress and rank == 0,
                    shard_size=shard_size, channels_last=speed["channels_last"])
        elapsed = time.time() - t0
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            assemble(out, work, data, settings["num_samples"], keys, settings["dtype"],
                     _file_attrs(model, settings, command, speed))
            summary(out, left * world, elapsed, log, world)  # ranks hold equal shards, +-1 batch
        if world > 1:
            torch.distributed.barrier()
    except BaseException:
        if state == "new" and world == 1 and not work.part_files():
            work.remove()  # failed before any image was done: leave nothing behind
        raise
    finally:
        work.release()


def _todo(work, n_total, batch_size, rank, world):
    """The batches of this rank not yet in ``work`` (lists of dataset indices), and how many
    images the rank's shard holds in all."""
    # Whole batches go to ranks round-robin, so every batch holds the same images as in a
    # single-process run: results match it bit for bit even where kernels depend on batch.
    batches = [np.arange(s, min(s + batch_size, n_total))
               for s in range(0, n_total, batch_size)][rank::world]
    done = work.done_indices()
    todo = [b[~np.isin(b, done)] for b in batches]
    return [b.tolist() for b in todo if len(b)], sum(len(b) for b in batches)


def _file_attrs(model, settings, command, speed):
    """What the feature file records about how it was made, besides ``settings``."""
    checkpoint_file = model.source if isinstance(model.source, str) and os.path.exists(
        model.source) else None
    return dict(settings, probe_version=__version__, family=model.family,
                model_blocks=model.block_names,  # block ids in every reader count in this
                model_info=model.describe(), checkpoint=model.source,
                checkpoint_sha256=sha256(checkpoint_file) if checkpoint_file else None,
                schedule=model.schedule.describe() if model.has_timesteps else None,
                settings=settings,
                compile=speed["compile"], channels_last=speed["channels_last"],
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                command=command or "probe.extract() from Python")


def _dist_info():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _on_rank0(fn, rank, world):
    """Run fn on rank 0 only and share its result (or its ProbeError) with every rank, so a
    refusal stops all ranks with the same message instead of leaving them at a barrier."""
    if world == 1:
        return fn()
    box = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except ProbeError as e:
            box[0] = ("error", str(e))
    torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise ProbeError(value)
    return value

