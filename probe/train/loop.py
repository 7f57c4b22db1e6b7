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
renamed into place (:mod:`probe.files`), so an interruption never leaves a half-written
checkpoint.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.indexed import Indexed
from ..device import resolve_device
from ..errors import ProbeError
from ..files import atomic_json, atomic_torch_save, remove_stale_temps
from ..version import __version__

MODEL_FILE, STATE_FILE, LOG_FILE = "model.pt", "train_state.pt", "log.json"
STATE_FORMAT = "probe-train-state"


# ---- seeds and data order ----------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed the global RNGs (used by model initialisation)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


# ---- the training images -----------------------------------------------------------------
class Images:
    """A dataset's images as batches: held in memory as one tensor when they fit in
    ``preload_limit`` bytes (decoded once), otherwise read per batch by a DataLoader.
    ``images[index_array]`` gives a (k, C, S, S) tensor in [0, 1]."""

    def __init__(self, dataset: Any, limit: int | None = None, num_workers: int = 0,
                 preload_limit: int = 2 << 30, progress: bool = True) -> None:
        self.dataset, self.num_workers = dataset, num_workers
        self.n = len(dataset) if limit is None else min(limit, len(dataset))
        if self.n < 1:
            raise ProbeError(f"no training images (limit {limit})")
        first = self._checked([Indexed(dataset)[0]])[0]
        self.shape = tuple(first.shape)
        self.labels = torch.as_tensor(np.asarray(dataset.labels[: self.n]))
        self.tensor = None
        if self.n * first.numel() * 4 <= preload_limit:
            self.tensor = torch.cat(list(self._loader(range(self.n), 256, progress)))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: Any) -> torch.Tensor:
        idx = torch.as_tensor(idx).long()
        if self.tensor is not None:
            return self.tensor[idx]
        return torch.cat(list(self._loader(idx.tolist(), 256, False)))

    def batches(self, order: Sequence[int] | np.ndarray, batch_size: int
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
            Indexed(self.dataset), batch_sampler=chunks, num_workers=self.num_workers,
            collate_fn=self._checked)
        return tqdm(loader, desc="loading images", unit="batch", disable=not progress,
                    leave=False)

    def _checked(self, batch):
        for _, image, _, bad in batch:
            if image is None:
                raise ProbeError(f"cannot train on an unreadable image: {bad}")
        # in a worker torch stacks into shared memory: no copy on the way to this process
        return torch.utils.data.default_collate([image for _, image, _, _ in batch])


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
def load_state(out: str) -> dict[str, Any] | None:
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


def prepare_out(out: str, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Check the output folder against --resume/--overwrite; returns the saved state."""
    if resume and overwrite:
        raise ProbeError("give --resume or --overwrite, not both")
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ProbeError(f"output folder {out} is not writable: choose another --out")
    remove_stale_temps(out)  # half-written checkpoints of a killed process
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
def check_options(epochs: int | None, steps: int | None, batch_size: int, lr: float,
                  warmup: int = 0, save_every: int = 0, log_every: int = 1) -> None:
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


def train(objective: Any, images: Images, out: str, *, epochs: int | None = None,
          steps: int | None = None, batch_size: int = 128, lr: float = 3e-4,
          weight_decay: float = 0.0, warmup: int = 0, seed: int = 0, device: Any = "cpu",
          state: dict[str, Any] | None = None, save_every: int = 0, log_every: int = 10,
          run_config: dict[str, Any] | None = None, command: Any = None,
          progress: bool = True) -> dict[str, Any]:
    """Train ``objective.model`` on ``images`` (an :class:`Images`) and write ``out``.

    Stops after ``epochs`` full epochs or ``steps`` optimizer steps in total (counting
    the steps before a resume).  ``state``: a saved training state (:func:`prepare_out`)
    to resume from.  Returns the log (also in ``out/log.json``).
    """
    check_options(epochs, steps, batch_size, lr, warmup, save_every, log_every)
    device = resolve_device(device)
    n = len(images)
    per_epoch = math.ceil(n / batch_size)
    target = epochs * per_epoch if epochs is not None else int(steps or 0)
    run_config = dict(run_config or {}, seed=seed, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, warmup=warmup, num_images=n)
    run = _Run(objective, out, run_config, per_epoch, target, device)
    if state is not None:
        run.resume(state)
    run.log["sessions"].append({"from_step": run.step, "device": str(device), "command": command,
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    run.log["target_step"] = target
    bar = tqdm(total=target, initial=min(run.step, target), unit="step", disable=not progress,
               dynamic_ncols=True)
    with _stop_flag() as flag:
        _steps(run, images, flag, bar, save_every=save_every, log_every=log_every)
    bar.close()
    if flag["stop"]:
        print(f"probe: stopped at step {run.step}; the checkpoint in {out} is saved: continue "
              "with the same command and --resume", file=sys.stderr)
        raise KeyboardInterrupt
    return run.log


class _Run:
    """One training run: the model, optimizer, noise generator, step and log that a
    checkpoint holds, and how to save them."""

    def __init__(self, objective, out, run_config, per_epoch, target, device):
        self.objective, self.out, self.run_config = objective, out, run_config
        self.per_epoch, self.target, self.device = per_epoch, target, device
        self.seed, self.lr, self.warmup = run_config["seed"], run_config["lr"], run_config["warmup"]
        self.model = objective.model.to(device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]  # fixed tables stay fixed
        if not params:
            raise ProbeError("the model has no trainable parameters (was it loaded with "
                             "load_model, which freezes them?)")
        self.optimizer = torch.optim.AdamW(params, lr=self.lr,
                                           weight_decay=run_config["weight_decay"])
        self.generator = torch.Generator().manual_seed(self.seed)
        self.step, self.acc = 0, {"interval": _zero(), "epoch": _zero()}
        self.log = {
            "family": objective.family, "run_config": run_config, "seed": self.seed,
            "data_order": "numpy.random.default_rng([seed, epoch]).permutation(num_images)",
            "noise": "torch.Generator().manual_seed(seed), state saved with each checkpoint",
            "steps_per_epoch": per_epoch, "loss": [], "epochs": [], "sessions": [],
            "wall_time_s": 0.0,
            "versions": {"probe": __version__, "torch": str(torch.__version__)}}

    def resume(self, state: dict[str, Any]) -> None:
        _check_same_run(state["run_config"], self.run_config, self.out)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step, self.acc, self.log = state["step"], state["accumulators"], state["log"]

    def learning_rate(self) -> float:
        """Linear warmup, then constant."""
        return self.lr * min(1.0, (self.step + 1) / self.warmup) if self.warmup else self.lr

    def record(self, loss: float, images: int, seconds: float, log_every: int) -> bool:
        """Account one step in the loss curve and the epoch table."""
        for a in self.acc.values():
            a["loss"] += loss
            a["batches"] += 1
            a["images"] += images
            a["seconds"] += seconds
        end_of_epoch = self.step % self.per_epoch == 0
        if self.step % log_every == 0 or end_of_epoch or self.step == self.target:
            a = self.acc["interval"]
            self.log["loss"].append({"step": self.step,
                                     "epoch": round(self.step / self.per_epoch, 4),
                                     "loss": a["loss"] / a["batches"], "images_per_s": _rate(a)})
            self.acc["interval"] = _zero()
        if end_of_epoch:
            a = self.acc["epoch"]
            self.log["epochs"].append({"epoch": self.step // self.per_epoch,
                                       "loss": a["loss"] / a["batches"],
                                       "images_per_s": _rate(a), "time_s": a["seconds"]})
            self.acc["epoch"] = _zero()
        return end_of_epoch

    def save(self) -> None:
        log, step = self.log, self.step
        last = log["loss"][-1]["loss"] if log["loss"] else None
        log.update(step=step, epochs_done=step / self.per_epoch, final_loss=last,
                   finished=step >= self.target)
        meta = {"step": step, "epochs": step / self.per_epoch, "seed": self.seed,
                "final_loss": last, "run_config": self.run_config}
        atomic_torch_save({"format": STATE_FORMAT, "version": 1, "run_config": self.run_config,
                           "model": self.model.state_dict(),
                           "optimizer": self.optimizer.state_dict(),
                           "rng": {"noise": self.generator.get_state(),
                                   "torch": torch.get_rng_state()},
                           "step": step, "accumulators": self.acc, "log": log},
                          os.path.join(self.out, STATE_FILE))
        atomic_torch_save(self.objective.export(meta), os.path.join(self.out, MODEL_FILE))
        for name, content in getattr(self.objective, "extra_files", dict)().items():
            atomic_json(content, os.path.join(self.out, name))
        atomic_json(log, os.path.join(self.out, LOG_FILE))


def _steps(run, images, flag, bar, *, save_every, log_every):
    """Optimizer steps until the target or a stop signal, saving at each epoch end, every
    ``save_every`` steps and on a stop."""
    batch_size, n = run.run_config["batch_size"], run.run_config["num_images"]
    session_start, last_save = time.perf_counter(), run.step
    while run.step < run.target and not flag["stop"]:
        epoch, first = divmod(run.step, run.per_epoch)
        order = epoch_order(run.seed, epoch, n)[first * batch_size:]
        bar.set_description(f"epoch {epoch + 1}")
        tick = time.perf_counter()
        for x, y in images.batches(order, batch_size):
            for group in run.optimizer.param_groups:
                group["lr"] = run.learning_rate()
            loss = run.objective.loss(x.to(run.device), y.to(run.device), run.generator)
            if not torch.isfinite(loss):
                raise ProbeError(f"the loss became {loss.item()} at step {run.step + 1}: "
                                 "lower --lr (or raise --warmup)")
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.step += 1
            now = time.perf_counter()
            end_of_epoch = run.record(loss.item(), x.shape[0], now - tick, log_every)
            tick = now
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}",
                            img_s=f"{_rate(run.acc['interval']):.0f}")
            run.log["wall_time_s"] += time.perf_counter() - session_start
            session_start = time.perf_counter()
            if (end_of_epoch or run.step == run.target or flag["stop"]
                    or (save_every and run.step - last_save >= save_every)):
                run.save()
                last_save = run.step
            if run.step >= run.target or flag["stop"]:
                break
    if run.step != last_save or not os.path.exists(os.path.join(run.out, MODEL_FILE)):
        run.save()  # e.g. --steps 0: an untrained model (with its fitted tokenizer)


def _zero():
    return {"loss": 0.0, "batches": 0, "images": 0, "seconds": 0.0}


def _rate(acc):
    return acc["images"] / max(acc["seconds"], 1e-9)
