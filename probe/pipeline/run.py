"""Stream block features of a diffusion model over a dataset into one HDF5 file.

A run works in a sibling folder ``OUT.partial/`` (:mod:`.workdir`): ``settings.json`` (what
is being computed), a ``lock`` held while a process writes, and ``parts/*.npz``, one file
per batch (:mod:`.loop`), each landing whole, so a killed run leaves only whole parts.
Re-running the same command skips the samples already in parts; once every sample is done,
the parts are streamed into a temporary file, marked complete and renamed to ``OUT``
(:mod:`.merge`).  Memory is bounded by one batch (plus one part while merging).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from ..data import load_dataset
from ..device import resolve_device
from ..errors import ProbeError
from ..extractors.weights import sha256
from ..precision import check_device, keep_fp32, parse_precision
from ..options import NoiseOptions, OutputOptions, RunOptions, gather, refuse_unknown
from ..selection import LogSNR, Spec, parse_t
from ..version import __version__
from .gpu import compiled, resolve_num_workers, use_channels_last
from .loop import DTYPES, run_batches
from .merge import assemble, summary
from .pooling import parse_pool
from .settings import FeatureSettings
from .workdir import Workdir, check_out

if TYPE_CHECKING:
    from ..extractors.base import Extractor

__all__ = ["extract", "weights_sha256"]


def weights_sha256(model: Extractor) -> str:
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
    digest = h.hexdigest()
    setattr(model, "_weights_sha256", (stamp, digest))  # nn.Module's __setattr__ types it
    return digest


def extract(model: str | Extractor, data: str | Any = "demo", t: Spec = None,
            blocks: Spec = "all", out: str | os.PathLike | None = None, *,
            split: str = "train", pool: str = "mean", limit: int | None = None,
            skip_bad: bool = False, stack_t: bool = False, noise: NoiseOptions | None = None,
            run: RunOptions | None = None, output: OutputOptions | None = None,
            log: Callable[[str], Any] = print, command: str | None = None,
            **options: Any) -> str:
    """Extract features of ``blocks`` at timesteps ``t`` for every image of ``data`` into
    the HDF5 file ``out`` (see :mod:`probe.store`).  Returns the path.

    ``model``: an Extractor or a model name.  ``data``: a dataset spec (``demo``,
    ``fashion-mnist``, ``imagefolder:ROOT`` ...) or a dataset from
    :func:`probe.data.load_dataset`.  ``limit``: the first N images of ``split`` only.
    ``pool``: see :mod:`probe.pipeline.pooling`.  ``skip_bad``: skip images that cannot be
    decoded (recorded in the file).  ``stack_t``: all timesteps of a batch in one pass.

    The other options come as objects of :mod:`probe.options`, or as keywords with their
    field names (keywords win over the object's fields; defaults are the dataclasses'):

    - ``noise`` (:class:`~probe.options.NoiseOptions`): ``t`` (default 100 for diffusion
      models; a network without timesteps takes none, and refuses ``ensemble`` and
      ``add_noise=False``), ``ensemble``, ``add_noise``, ``noise_seed``, ``class_label``;
    - ``run`` (:class:`~probe.options.RunOptions`): ``device`` (default auto),
      ``threads``, ``batch_size`` (default 32), ``num_workers``, ``progress``;
    - ``output`` (:class:`~probe.options.OutputOptions`): ``out`` (default
      MODEL-DATA-SPLIT.h5), ``overwrite``, ``dtype``.

    Other keywords go to :func:`~probe.load_model` when ``model`` is a name.

    A model passed in is moved to the device and put in eval mode for the run, and put
    back (its device and every submodule's train/eval mode) when it ends; it does keep
    the class names of ``data`` (:meth:`~probe.extractors.base.Extractor.use_class_names`).
    """
    given = dict(options, **{k: v for k, v in (("t", t), ("out", out)) if v is not None})
    noise = gather(NoiseOptions, noise, given)
    run = gather(RunOptions, run, given).with_defaults(batch_size=32)
    output = gather(OutputOptions, output, given)
    model_kwargs = given  # what no option class took
    if model_kwargs and not isinstance(model, str):
        refuse_unknown(model_kwargs, NoiseOptions, RunOptions, OutputOptions)
    if output.dtype not in DTYPES:
        raise ProbeError(f"bad --dtype {output.dtype!r}: use float16 or float32")
    pool = parse_pool(pool)
    run.use_threads()
    device = resolve_device(run.device)
    check_device(parse_precision(run.precision), device)
    if isinstance(model, str):
        from ..extractors.registry import load_model

        return _extract(load_model(model, device=device, **model_kwargs), data, blocks, split,
                        pool, limit, skip_bad, stack_t, noise, run, output, device, log,
                        command)
    with _borrowed(model, device):
        return _extract(model, data, blocks, split, pool, limit, skip_bad, stack_t, noise, run,
                        output, device, log, command)


@contextlib.contextmanager
def _borrowed(model: Extractor, device: torch.device) -> Iterator[None]:
    """``model`` on ``device`` in eval mode for the run; then back where it was, each
    submodule in its own mode (a frozen VAE stays in eval while the net trains)."""
    modes = [(m, m.training) for m in model.modules()]
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    home = first.device if first is not None else None
    model.to(device).eval()
    try:
        yield
    finally:
        if home is not None and home != device:
            model.to(home)
        for m, mode in modes:
            m.training = mode


def _extract(model, data, blocks, split, pool, limit, skip_bad, stack_t, noise, run, output,
             device, log, command):
    for module in model.fp32_modules().values():
        keep_fp32(module)
    ts = _timesteps(model, noise, log)
    names = sorted(model.resolve_blocks(blocks), key=model.block_names.index)  # forward order
    if isinstance(data, str):
        data = load_dataset(data, split, model.data_size, model.image_channels,
                            model.data_interpolation)
    model.use_class_names(data.class_names)  # embeds a {class} prompt per class, before hashing
    n_total = len(data) if limit is None else min(int(limit), len(data))
    if n_total <= 0:
        raise ProbeError("nothing to extract: the dataset (or --limit) has zero images")
    out = (os.fspath(output.out) if output.out
           else f"{model.name}-{data.spec.split(':')[0]}-{data.split}.h5")
    settings = FeatureSettings(
        model=model.name, weights_sha256=weights_sha256(model), timesteps=tuple(ts),
        blocks=tuple(names), pool=pool, dtype=output.dtype, class_label=noise.class_label,
        data=data.spec, split=data.split, num_samples=n_total, image_size=model.image_size,
        transform=f"{data.describe_transform()}; model input: {model.input_pipeline}",
        skip_bad=bool(skip_bad), noise_seed=noise.noise_seed, ensemble=noise.ensemble,
        add_noise=noise.add_noise, precision=parse_precision(run.precision))
    with compiled(model, run.compile):
        _run(model, data, out, settings, overwrite=output.overwrite, run=run, device=device,
             stack_t=stack_t, log=log, command=command)
    return out


def _timesteps(model, noise, log=print):
    """The timesteps to extract, checked against the model: [] for a network without
    timesteps, which refuses every option about noise."""
    if not model.has_timesteps:
        why = f"{model.name} has no timestep (it sees the clean image)"
        if noise.t is not None:
            raise ProbeError(f"{why}: drop --t")
        if noise.ensemble != 1:
            raise ProbeError(f"{why} and no noise to average over: drop --ensemble")
        if not noise.add_noise:
            raise ProbeError(f"{why}: drop --no-noise, its input is already clean")
        return []
    if noise.t is None and getattr(model.schedule, "continuous", False):
        raise ProbeError(f"{model.name}'s t is continuous in [0, 1] "
                         f"({model.schedule.describe().get('t')}): give it, e.g. --t 0.5")
    if isinstance(noise.t, LogSNR):
        from ..extractors.schedules import t_for_log_snr

        return sorted({t_for_log_snr(model.schedule, x, model.name, log) for x in noise.t.values})
    ts = parse_t(100 if noise.t is None else noise.t)
    if ts is None:
        raise ProbeError("--t all: name the timesteps to extract (each costs a forward pass), "
                         "e.g. --t 10,100,500")
    for tt in ts:
        model.schedule.check_t(tt)
    return ts


def _run(model, data, out, settings, *, overwrite, run, device, stack_t, log, command):
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
        todo, shard_size = _todo(work, settings.num_samples, run.batch_size, rank, world)
        left = sum(len(b) for b in todo)
        if left < shard_size:
            log(f"resuming: {shard_size - left} of {shard_size} images already done")
        keys = [(tt, b) for tt in settings.timesteps or [None] for b in settings.blocks]
        speed = dict(compile=bool(run.compile), channels_last=use_channels_last(model, device))
        run_batches(model, data, todo, keys, work, settings,
                    num_workers=resolve_num_workers(run.num_workers, device),
                    device=device, stack_t=stack_t, progress=run.progress and rank == 0,
                    shard_size=shard_size, channels_last=speed["channels_last"])
        elapsed = time.time() - t0
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            assemble(out, work, data, settings.num_samples, keys, settings.dtype,
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
    """What the feature file records: the settings (each field once, as an attribute), and
    how it was made (``speed``: how it ran, which does not change the features)."""
    checkpoint_file = model.source if isinstance(model.source, str) and os.path.exists(
        model.source) else None
    return dict(settings.as_dict(), probe_version=__version__, family=model.family,
                model_blocks=model.block_names,  # block ids in every reader count in this
                model_info=model.describe(), checkpoint=model.source,
                checkpoint_sha256=sha256(checkpoint_file) if checkpoint_file else None,
                schedule=model.schedule.describe() if model.has_timesteps else None,
                compile=speed["compile"], channels_last=speed["channels_last"],
                **(_noise_table(model.schedule, settings.timesteps) if model.has_timesteps else {}),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                command=command or "probe.extract() from Python")


def _noise_table(schedule: Any, timesteps: Any) -> dict:
    from ..extractors.schedules import noise_table

    return noise_table(schedule, timesteps)


def _dist_info():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _on_rank0(fn, rank, world):
    """Run fn on rank 0 only and share its result (or its ProbeError) with every rank, so a
    refusal stops all ranks with the same message instead of leaving them at a barrier."""
    if world == 1:
        return fn()
    box: list[Any] = [None]
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

