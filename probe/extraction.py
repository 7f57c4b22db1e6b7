"""Stream block features of a diffusion model over a dataset into one HDF5 file.

A run works in a sibling folder ``OUT.partial/``: ``settings.json`` (what is being
computed), a ``lock`` held while a process writes, and ``parts/*.npz``, one file per
batch, each written to a temporary name and renamed, so a killed run leaves only
whole parts.  Re-running the same command skips the samples already in parts; once
every sample is done, the parts are streamed into ``OUT.tmp``, marked complete and
renamed to ``OUT``.  Memory is bounded by one batch (plus one part while merging).
"""
import fcntl
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch

from . import __version__, store
from .data import load_dataset
from .errors import ProbeError
from .extractors.checkpoints import sha256
from .noise import per_sample_noise
from .pooling import apply_pool, parse_pool

DTYPES = {"float32": np.float32, "float16": np.float16}


def parse_timesteps(t):
    """100 | '10,100' | [10, 100] | ['10,100', 500] -> [10, 100, 500] (sorted, unique)."""
    items = t if isinstance(t, (list, tuple)) else [t]
    out = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            try:
                out.append(int(part))
            except ValueError:
                raise ProbeError(f"bad --t {part!r}: give integer timesteps, e.g. --t 10,100,500") from None
    if not out:
        raise ProbeError("no timesteps given: use e.g. --t 100")
    return sorted(set(out))


def weights_sha256(model):
    """A hash of every weight the features depend on (network and VAE)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        image, label = self.ds[i]
        return i, image, label, (self.ds.bad_reason(i) if image is None else None)


def _collate(batch):
    good = [b for b in batch if b[1] is not None]
    return {
        "index": np.array([b[0] for b in good], dtype=np.int64),
        "images": torch.stack([b[1] for b in good]) if good else None,
        "labels": torch.tensor([b[2] for b in good], dtype=torch.long),
        "bad": [(b[0], b[3]) for b in batch if b[1] is None],
    }


class _Workdir:
    """The OUT.partial folder: settings, lock and parts of an unfinished run."""

    def __init__(self, out):
        self.path = f"{out}.partial"
        self.parts = os.path.join(self.path, "parts")
        self.settings_file = os.path.join(self.path, "settings.json")
        self._lock = None

    def exists(self):
        return os.path.isdir(self.path)

    def settings(self):
        try:
            with open(self.settings_file) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def start(self, settings, rank=0):
        try:
            os.makedirs(self.parts, exist_ok=True)
        except OSError as e:  # e.g. a folder the kernel owns (/proc, /sys) or a read-only mount
            raise ProbeError(f"cannot create {self.path} ({e.strerror}): choose another --out "
                             "in a folder you can write to") from None
        if rank == 0 and self.settings() != settings:  # new, or resumed with --skip-bad
            _atomic_write(self.settings_file, json.dumps(settings, indent=1, sort_keys=True).encode())
        self._lock = _try_lock(os.path.join(self.path, f"lock.{rank}"))
        if self._lock is None:
            raise _another_writer(self.path[:-len(".partial")])

    def busy(self):
        """Whether a live `probe extract` holds one of this run's locks (a dead one's lock is
        released by the kernel, so a killed run is never mistaken for a live one)."""
        for path in glob.glob(os.path.join(self.path, "lock.*")):
            fh = _try_lock(path)
            if fh is None:
                return True
            fh.close()
        return False

    def release(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def part_files(self):
        return sorted(glob.glob(os.path.join(self.parts, "*.npz")))

    def done_indices(self):
        done = []
        for p in self.part_files():
            with np.load(p) as z:
                done.append(z["index"])
                done.append(z["skipped"])
        return np.concatenate(done) if done else np.zeros(0, np.int64)

    def write_part(self, index, skipped, arrays):
        first = int(index[0]) if len(index) else int(skipped[0])
        path = os.path.join(self.parts, f"{first:010d}.npz")
        buf = _npz_bytes(index=index, skipped=np.asarray(skipped, np.int64),
                         **{f"k{j}": a for j, a in enumerate(arrays)})
        _atomic_write(path, buf)

    def remove(self):
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)


def _try_lock(path):
    """The open lock file, held exclusively, or None if another process holds it."""
    fh = open(path, "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def _another_writer(out):
    return ProbeError(f"another `probe extract` is writing {out} right now: wait for it to "
                      "finish, or choose another --out")


def _npz_bytes(**arrays):
    import io

    bio = io.BytesIO()
    np.savez(bio, **arrays)
    return bio.getvalue()


def _atomic_write(path, data):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise ProbeError(f"cannot write {path}: {e.strerror or e} — free disk space or fix "
                         "permissions, then re-run the same command to resume") from e


def _complete_settings(out):
    """Settings of a complete feature file at ``out``, or None if it is not one."""
    import h5py

    try:
        with h5py.File(out, "r") as f:
            if f.attrs.get("format") == store.FORMAT and bool(f.attrs.get("complete", False)):
                return json.loads(f.attrs.get("settings", "null"))
    except (OSError, ValueError):
        pass
    return None


def _check_out(out, settings, overwrite, work):
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        raise ProbeError(f"output folder {d} does not exist: create it or choose another --out")
    if not os.access(d, os.W_OK):
        raise ProbeError(f"output folder {d} is not writable: choose another --out")
    if work.busy():  # checked before --overwrite deletes anything of a live run
        raise _another_writer(out)
    if overwrite:
        if os.path.exists(out):
            os.remove(out)
        work.remove()
        return "new"
    if os.path.exists(out):
        done = _complete_settings(out)
        if done == settings:
            work.remove()  # a run killed between rename and clean-up
            return "complete"
        raise ProbeError(f"{out} exists and was made by a different command: pass --overwrite "
                         "to replace it, or choose another --out")
    if work.exists():
        old = work.settings()
        if old is not None and not old.get("skip_bad") and settings["skip_bad"]:
            # the advice given when a bad image stops a run: its parts hold no bad image, so
            # they stay valid with --skip-bad turned on
            old = dict(old, skip_bad=True)
        if old is not None and old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ProbeError(f"{work.path} holds an unfinished run with different settings "
                             f"({', '.join(diff)}): re-run that command to finish it, or pass "
                             "--overwrite to start over")
        return "resume"
    return "new"


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


def extract(model, data="demo", t=100, blocks="all", out=None, *, split="train", pool="mean",
            dtype="float32", noise_seed=0, ensemble=1, add_noise=True, class_label=None,
            batch_size=32, num_workers=0, device=None, overwrite=False, skip_bad=False,
            limit=None, stack_t=False, progress=True, log=print, command=None, **model_kwargs):
    """Extract features of ``blocks`` at timesteps ``t`` for every image of ``data`` into
    the HDF5 file ``out`` (see :mod:`probe.store`).  Returns the path.

    ``model``: an Extractor or a model name (then ``model_kwargs`` go to load_model).
    ``data``: a dataset spec (``demo``, ``fashion-mnist``, ``imagefolder:ROOT`` ...) or a
    dataset from :func:`probe.data.load_dataset`.  ``add_noise=False`` conditions on t
    without noising (the l-DAE paper's clean-input probe).  ``class_label``: None for the
    model's null class, an int for one class, or "true" to feed the true labels.
    """
    from .extractors.registry import load_model

    if batch_size is None or int(batch_size) < 1:
        raise ProbeError(f"--batch-size must be a positive integer, not {batch_size}")
    if int(ensemble) < 1:
        raise ProbeError(f"--ensemble must be at least 1, not {ensemble}")
    if num_workers is None or int(num_workers) < 0:
        raise ProbeError(f"--num-workers must be 0 or more, not {num_workers}")
    if dtype not in DTYPES:
        raise ProbeError(f"bad --dtype {dtype!r}: use float16 or float32")
    pool = parse_pool(pool)
    ts = parse_timesteps(t)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(model, str):
        model = load_model(model, device=device, **model_kwargs)
    model = model.to(device).eval()
    for tt in ts:
        model.schedule.check_t(tt)
    names = sorted(model.resolve_blocks(blocks), key=model.block_names.index)  # forward order
    if isinstance(data, str):
        data = load_dataset(data, split, model.image_size, model.image_channels)
    n_total = len(data) if limit is None else min(int(limit), len(data))
    if n_total <= 0:
        raise ProbeError("nothing to extract: the dataset (or --limit) has zero images")
    if class_label not in (None, "true"):
        class_label = int(class_label)
    out = out or f"{model.name}-{data.spec.split(':')[0]}-{data.split}.h5"

    checkpoint_file = model.source if isinstance(model.source, str) and os.path.exists(
        model.source) else None
    settings = {
        "model": model.name, "weights_sha256": weights_sha256(model),
        "timesteps": ts, "blocks": names, "pool": pool, "dtype": dtype,
        "noise_seed": int(noise_seed), "ensemble": int(ensemble), "add_noise": bool(add_noise),
        "class_label": class_label, "data": data.spec, "split": data.split,
        "num_samples": n_total, "image_size": model.image_size,
        "transform": f"{data.describe_transform()}; model input: {model.input_pipeline}",
        "skip_bad": bool(skip_bad),
    }
    rank, world = _dist_info()
    work = _Workdir(out)
    state = _on_rank0(lambda: _check_out(out, settings, overwrite, work), rank, world)
    if state == "complete":
        log(f"{out} is already complete for these settings: nothing to do")
        return out
    work.start(settings, rank)
    try:
        t0 = time.time()
        # Whole batches go to ranks round-robin, so every batch holds the same images as in a
        # single-process run: results match it bit for bit even where kernels depend on batch.
        batches = [np.arange(s, min(s + batch_size, n_total))
                   for s in range(0, n_total, batch_size)][rank::world]
        done = work.done_indices()
        todo = [b[~np.isin(b, done)] for b in batches]
        todo = [b.tolist() for b in todo if len(b)]
        shard_size = sum(len(b) for b in batches)
        left = sum(len(b) for b in todo)
        if left < shard_size:
            log(f"resuming: {shard_size - left} of {shard_size} images already done")
        keys = [(tt, b) for tt in ts for b in names]
        _run(model, data, todo, keys, ts, names, work, settings, num_workers, device, stack_t,
             skip_bad, progress and rank == 0, shard_size)
        elapsed = time.time() - t0
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            attrs = dict(settings, probe_version=__version__, family=model.family,
                         model_info=model.describe(), checkpoint=model.source,
                         checkpoint_sha256=sha256(checkpoint_file) if checkpoint_file else None,
                         schedule=model.schedule.describe(), settings=settings,
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         command=command or "probe.extract() from Python")
            _assemble(out, work, data, n_total, keys, dtype, attrs)
            _summary(out, left * world, elapsed, log, world)  # ranks hold equal shards, +-1 batch
        if world > 1:
            torch.distributed.barrier()
    except BaseException:
        if state == "new" and world == 1 and not work.part_files():
            work.remove()  # failed before any image was done: leave nothing behind
        raise
    finally:
        work.release()
    return out


@torch.inference_mode()
def _run(model, data, todo, keys, ts, names, work, settings, num_workers, device, stack_t,
         skip_bad, progress, shard_size):
    from tqdm import tqdm

    if not todo:
        return
    loader = torch.utils.data.DataLoader(
        _Indexed(data), batch_sampler=todo, num_workers=num_workers, collate_fn=_collate,
        pin_memory=device.type == "cuda")
    np_dtype = DTYPES[settings["dtype"]]
    bar = tqdm(total=shard_size, initial=shard_size - sum(len(b) for b in todo), unit="img",
               disable=not progress, dynamic_ncols=True, desc="extract")
    for batch in loader:
        if batch["bad"] and not skip_bad:
            i, reason = batch["bad"][0]
            raise ProbeError(f"cannot decode image {reason} — fix or remove it, or pass "
                             "--skip-bad to skip such images (they are recorded in the file)")
        arrays = []
        if batch["images"] is not None:
            ids = [data.ids[i] for i in batch["index"]]
            y = batch["labels"] if settings["class_label"] == "true" else settings["class_label"]
            feats = _features(model, batch["images"].to(device, non_blocking=True), ids, y,
                              ts, names, settings, stack_t)
            arrays = [feats[k].cpu().numpy().astype(np_dtype) for k in keys]
        work.write_part(batch["index"], [i for i, _ in batch["bad"]], arrays)
        bar.update(len(batch["index"]) + len(batch["bad"]))
    bar.close()


def _features(model, images, ids, y, ts, names, settings, stack_t):
    """{(t, block): pooled features (B, ...)} for one batch, averaged over ensemble draws."""
    x0 = model.prepare(images)
    b = x0.shape[0]
    draws = [(tt, k) for tt in ts for k in range(settings["ensemble"])]

    def noised(tt, k):
        if not settings["add_noise"]:
            return x0
        noise = per_sample_noise(x0.shape[1:], settings["noise_seed"], ids, tt, k,
                                 device=x0.device, dtype=x0.dtype)
        return model.q_sample(x0, tt, noise)

    groups = [draws] if stack_t else [[d] for d in draws]
    out = {}
    for group in groups:
        x = torch.cat([noised(tt, k) for tt, k in group])
        tvec = torch.cat([torch.full((b,), tt, device=x.device, dtype=torch.long) for tt, _ in group])
        yy = y if not torch.is_tensor(y) else y.to(x.device).repeat(len(group))
        feats = model.forward_intermediates(x, tvec, names, y=yy, stop_early=True)
        for j, (tt, _) in enumerate(group):
            for name, f in feats.items():
                pooled = apply_pool(f[j * b:(j + 1) * b], settings["pool"]).float()
                key = (tt, name)
                out[key] = out[key] + pooled if key in out else pooled
    return {k: v / settings["ensemble"] for k, v in out.items()}


def _assemble(out, work, data, n_total, keys, dtype, attrs):
    parts = work.part_files()
    index, skipped, shapes = [], [], None
    for p in parts:
        with np.load(p) as z:
            index.append(z["index"])
            skipped.append(z["skipped"])
            if shapes is None and len(z["index"]):
                shapes = {k: z[f"k{j}"].shape[1:] for j, k in enumerate(keys)}
    good = np.sort(np.concatenate(index)) if index else np.zeros(0, np.int64)
    skipped = np.sort(np.concatenate(skipped)) if skipped else np.zeros(0, np.int64)
    if len(good) + len(skipped) != n_total or len(np.unique(good)) != len(good):
        raise ProbeError(f"{work.path} does not cover all {n_total} images: re-run the same "
                         "command to finish the missing ones")
    if shapes is None:
        raise ProbeError("every image was skipped as unreadable: nothing to write")
    labels = np.asarray(data.labels)[good]
    ids = [data.ids[i] for i in good]
    attrs = dict(attrs, num_skipped=int(len(skipped)))
    tmp = f"{out}.tmp"
    try:
        with store.create(tmp, num_samples=len(good), shapes=shapes, dtype=DTYPES[dtype],
                          labels=labels, ids=ids, class_names=data.class_names, attrs=attrs) as f:
            f.create_dataset("skipped_ids", data=np.asarray([data.ids[i] for i in skipped],
                                                             dtype=object), dtype=store._STR)
            dsets = [f[f"features/{store.key_name(*k)}"] for k in keys]
            for p in parts:
                with np.load(p) as z:
                    if not len(z["index"]):
                        continue
                    rows = np.searchsorted(good, z["index"])
                    sel = (slice(int(rows[0]), int(rows[-1]) + 1)
                           if rows[-1] - rows[0] + 1 == len(rows) else rows)
                    for j, ds in enumerate(dsets):
                        ds[sel] = z[f"k{j}"]
            store.mark_complete(f)
        os.replace(tmp, out)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise ProbeError(f"cannot write {out}: {e} — free disk space or fix permissions, then "
                         "re-run the same command (finished parts are kept)") from e
    work.remove()


def _summary(out, n, elapsed, log, world=1):
    """``n``: images extracted by this session (a resumed run did the rest before)."""
    with store.open_features(out) as f:
        size = os.path.getsize(out)
        log(f"wrote {out} ({size / 2**20:.1f} MiB): {len(f)} images"
            + (f", {f.attrs.get('num_skipped')} skipped" if f.attrs.get("num_skipped") else "")
            + f" in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.1f} img/s"
            + (f" on {world} ranks)" if world > 1 else ")"))
        for key in f.keys:
            log(f"  t={key[0]:<5} {key[1]:<24} {tuple(f.dataset(key).shape)} {f.dataset(key).dtype}")
