"""The training loop shared by every family: AdamW, tqdm, checkpoints, exact resume.

An *objective* brings the model and the loss; the loop brings everything else::

    objective.model                           # nn.Module whose parameters are trained
    objective.loss(images, labels, generator) # scalar; randomness only from generator
    objective.export(meta)                    # what model.pt holds (the family's format)
    objective.extra_files()                   # optional: {name: JSON} written next to it

A run lives in one folder ``OUT``:

- ``model.pt``       the model in its family's checkpoint format (rewritten every epoch)
- ``train_state.pt`` model, optimizer, noise-generator state and step: what resume reads
- ``log.json``       run config, seeds, the loss curve, images/s, wall time

Everything random is a function of the seed and the step: the data order of epoch e
is ``numpy.random.default_rng([seed, e]).permutation(N)``, the noise comes from one
CPU ``torch.Generator`` seeded with ``seed`` whose state is checkpointed.  The step
fixes the position in the data, so resuming at any saved step replays exactly what
an uninterrupted run would have done.  Files are written to a temporary name and
renamed into place, so an interruption never leaves a half-written checkpoint.
"""
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import ProbeError

MODEL_FILE, STATE_FILE, LOG_FILE = "model.pt", "train_state.pt", "log.json"
STATE_FORMAT = "probe-train-state"


# ---- devices, seeds, files --------------------------------------------------------------
def resolve_device(device):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ProbeError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"device {device!r} requested but no CUDA device is available: "
                         "use --device cpu")
    return dev


def seed_everything(seed):
    """Seed the global RNGs (used by model initialisation)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


def atomic_save(obj, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_json(obj, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def epoch_order(seed, epoch, n):
    return np.random.default_rng([seed, epoch]).permutation(n)


# ---- the training images -----------------------------------------------------------------
class Images:
    """A dataset's images as batches: held in memory as one tensor when they fit in
    ``preload_limit`` bytes (decoded once), otherwise read per batch by a DataLoader.
    ``images[index_array]`` gives a (k, C, S, S) tensor in [0, 1]."""

    def __init__(self, dataset, limit=None, num_workers=0, preload_limit=2 << 30,
                 progress=True):
        self.dataset, self.num_workers = dataset, num_workers
        self.n = len(dataset) if limit is None else min(limit, len(dataset))
        if self.n < 1:
            raise ProbeError(f"no training images (limit {limit})")
        first = self._checked([(0,) + tuple(dataset[0])])[0]
        self.shape = tuple(first.shape)
        self.labels = torch.as_tensor(np.asarray(dataset.labels[: self.n]))
        self.tensor = None
        if self.n * first.numel() * 4 <= preload_limit:
            self.tensor = torch.cat(list(self._loader(range(self.n), 256, progress)))

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx).long()
        if self.tensor is not None:
            return self.tensor[idx]
        return torch.cat(list(self._loader(idx.tolist(), 256, False)))

    def batches(self, order, batch_size):
        """Yield (images, labels) for ``order`` cut into batches."""
        if self.tensor is not None:
            for i in range(0, len(order), batch_size):
                idx = torch.as_tensor(order[i:i + batch_size])
                yield self.tensor[idx], self.labels[idx]
            return
        for i, images in zip(range(0, len(order), batch_size),
                             self._loader(list(order), batch_size, False)):
            yield images, self.labels[torch.as_tensor(order[i:i + batch_size])]

    def _loader(self, indices, batch_size, progress):
        chunks = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
        loader = torch.utils.data.DataLoader(
            _Indexed(self.dataset), batch_sampler=chunks, num_workers=self.num_workers,
            collate_fn=self._checked)
        return tqdm(loader, desc="loading images", unit="batch", disable=not progress,
                    leave=False)

    def _checked(self, batch):
        for i, image, _ in batch:
            if image is None:
                raise ProbeError(f"cannot train on an unreadable image: "
                                 f"{self.dataset.bad_reason(i)}")
        return torch.stack([image for _, image, _ in batch])


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return (i,) + tuple(self.dataset[i])


# ---- stopping cleanly on Ctrl-C ----------------------------------------------------------
@contextmanager
def _stop_flag():
    """First Ctrl-C asks the loop to save and stop after the current step; a second one
    interrupts at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        print("\nprobe: saving a checkpoint, then stopping (Ctrl-C again to abort)",
              file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- resume ------------------------------------------------------------------------------
def load_state(out):
    """The saved training state of the run in ``out``, or None."""
    path = os.path.join(out, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ProbeError(f"cannot read {path} ({type(e).__name__}); start again with "
                         "--overwrite") from e
    if not (isinstance(state, dict) and state.get("format") == STATE_FORMAT):
        raise ProbeError(f"{path} is not a probe training state")
    return state


def _check_same_run(saved, now, out):
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        k = diff[0]
        raise ProbeError(f"--resume: the run in {out} was started with {k}={saved.get(k)!r}, "
                         f"not {now.get(k)!r}; resume with the same options (only --epochs, "
                         "--steps, --device and saving options may change) or use a new --out")


def _remove_stale_tmp(out):
    """Half-written checkpoints of a killed process (``FILE.tmp-PID``, PID gone)."""
    for name in os.listdir(out):
        _, sep, pid = name.rpartition(".tmp-")
        if not sep or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            os.remove(os.path.join(out, name))
        except PermissionError:
            pass  # alive, someone else's


def prepare_out(out, resume, overwrite):
    """Check the output folder against --resume/--overwrite; returns the saved state."""
    if resume and overwrite:
        raise ProbeError("give --resume or --overwrite, not both")
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ProbeError(f"output folder {out} is not writable: choose another --out")
    _remove_stale_tmp(out)
    state = load_state(out)
    if resume and state is None:
        raise ProbeError(f"--resume: no {STATE_FILE} in {out}, nothing to resume; drop --resume")
    if state is not None and not resume:
        if not overwrite:
            raise ProbeError(f"{out} already holds a training run: pass --resume to continue "
                             "it, --overwrite to start again, or choose another --out")
        for f in (STATE_FILE, MODEL_FILE, LOG_FILE, "config.json"):
            if os.path.exists(os.path.join(out, f)):
                os.remove(os.path.join(out, f))
        state = None
    return state


# ---- the loop ----------------------------------------------------------------------------
def check_options(epochs, steps, batch_size, lr, warmup=0, save_every=0, log_every=1):
    """The training options a user can get wrong, checked before any work."""
    if (epochs is None) == (steps is None):
        raise ProbeError("give the length of training as --epochs or --steps (one of them)")
    length = epochs if epochs is not None else steps
    if not isinstance(length, int) or length < 0:
        raise ProbeError(f"--epochs/--steps must be a non-negative integer, not {length!r}")
    if batch_size < 1:
        raise ProbeError(f"--batch-size must be at least 1, not {batch_size}")
    if not lr > 0:
        raise ProbeError(f"--lr must be positive, not {lr}")
    if warmup < 0 or save_every < 0 or log_every < 1:
        raise ProbeError("--warmup and --save-every must be >= 0 and --log-every >= 1")


def train(objective, images, out, *, epochs=None, steps=None, batch_size=128, lr=3e-4,
          weight_decay=0.0, warmup=0, seed=0, device="cpu", state=None, save_every=0,
          log_every=10, run_config=None, command=None, progress=True):
    """Train ``objective.model`` on ``images`` (an :class:`Images`) and write ``out``.

    Stops after ``epochs`` full epochs or ``steps`` optimizer steps in total (counting
    the steps before a resume).  ``state``: a saved training state (:func:`prepare_out`)
    to resume from.  Returns the log (also in ``out/log.json``).
    """
    check_options(epochs, steps, batch_size, lr, warmup, save_every, log_every)
    device = resolve_device(device)
    n = len(images)
    per_epoch = math.ceil(n / batch_size)
    target = epochs * per_epoch if epochs is not None else steps
    run_config = dict(run_config or {}, seed=seed, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, warmup=warmup, num_images=n)

    model = objective.model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]  # fixed tables stay fixed
    if not params:
        raise ProbeError("the model has no trainable parameters (was it loaded with "
                         "load_model, which freezes them?)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step, acc = 0, {"interval": _zero(), "epoch": _zero()}
    log = {"family": objective.family, "run_config": run_config, "seed": seed,
           "data_order": "numpy.random.default_rng([seed, epoch]).permutation(num_images)",
           "noise": "torch.Generator().manual_seed(seed), state saved with each checkpoint",
           "steps_per_epoch": per_epoch, "loss": [], "epochs": [], "sessions": [],
           "wall_time_s": 0.0,
           "versions": {"probe": __version__, "torch": str(torch.__version__)}}
    if state is not None:
        _check_same_run(state["run_config"], run_config, out)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])
        step, acc, log = state["step"], state["accumulators"], state["log"]
    log["sessions"].append({"from_step": step, "device": str(device), "command": command,
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    log["target_step"] = target

    def save():
        last = log["loss"][-1]["loss"] if log["loss"] else None
        log.update(step=step, epochs_done=step / per_epoch, final_loss=last,
                   finished=step >= target)
        meta = {"step": step, "epochs": step / per_epoch, "seed": seed,
                "final_loss": last, "run_config": run_config}
        atomic_save({"format": STATE_FORMAT, "version": 1, "run_config": run_config,
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "rng": {"noise": generator.get_state(), "torch": torch.get_rng_state()},
                     "step": step, "accumulators": acc, "log": log},
                    os.path.join(out, STATE_FILE))
        atomic_save(objective.export(meta), os.path.join(out, MODEL_FILE))
        for name, content in getattr(objective, "extra_files", dict)().items():
            atomic_json(content, os.path.join(out, name))
        atomic_json(log, os.path.join(out, LOG_FILE))

    bar = tqdm(total=target, initial=min(step, target), unit="step", disable=not progress,
               dynamic_ncols=True)
    session_start, last_save = time.perf_counter(), step
    with _stop_flag() as flag:
        while step < target and not flag["stop"]:
            epoch, first = divmod(step, per_epoch)
            order = epoch_order(seed, epoch, n)[first * batch_size:]
            bar.set_description(f"epoch {epoch + 1}")
            tick = time.perf_counter()
            for x, y in images.batches(order, batch_size):
                for group in optimizer.param_groups:  # linear warmup, then constant
                    group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
                loss = objective.loss(x.to(device), y.to(device), generator)
                if not torch.isfinite(loss):
                    raise ProbeError(f"the loss became {loss.item()} at step {step + 1}: "
                                     "lower --lr (or raise --warmup)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                now = time.perf_counter()
                for a in acc.values():
                    a["loss"] += loss.item()
                    a["batches"] += 1
                    a["images"] += x.shape[0]
                    a["seconds"] += now - tick
                tick = now
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}",
                                img_s=f"{_rate(acc['interval']):.0f}")
                end_of_epoch = step % per_epoch == 0
                if step % log_every == 0 or end_of_epoch or step == target:
                    a = acc["interval"]
                    log["loss"].append({"step": step, "epoch": round(step / per_epoch, 4),
                                        "loss": a["loss"] / a["batches"],
                                        "images_per_s": _rate(a)})
                    acc["interval"] = _zero()
                if end_of_epoch:
                    a = acc["epoch"]
                    log["epochs"].append({"epoch": step // per_epoch,
                                          "loss": a["loss"] / a["batches"],
                                          "images_per_s": _rate(a), "time_s": a["seconds"]})
                    acc["epoch"] = _zero()
                log["wall_time_s"] += time.perf_counter() - session_start
                session_start = time.perf_counter()
                if (end_of_epoch or step == target or flag["stop"]
                        or (save_every and step - last_save >= save_every)):
                    save()
                    last_save = step
                if step >= target or flag["stop"]:
                    break
        if step != last_save or not os.path.exists(os.path.join(out, MODEL_FILE)):
            save()  # e.g. --steps 0: an untrained model (with its fitted tokenizer)
    bar.close()
    if flag["stop"]:
        print(f"probe: stopped at step {step}; the checkpoint in {out} is saved: continue "
              "with the same command and --resume", file=sys.stderr)
        raise KeyboardInterrupt
    return log


def _zero():
    return {"loss": 0.0, "batches": 0, "images": 0, "seconds": 0.0}


def _rate(acc):
    return acc["images"] / max(acc["seconds"], 1e-9)
