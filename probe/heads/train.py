"""The training loop for heads on cached features.

Several *units* train in one pass over the data, sharing every batch: a unit is a
module that returns one logits tensor per *member* (a :class:`LinearGrid` has one member
per key; any other head is a unit with one member).  Each member keeps its own
early-stopping state, and each head's start is seeded by (seed, key, head), so a head
trained in a grid ends exactly where it would alone (up to float rounding in the
stacked linear grid).
"""
from __future__ import annotations

import copy
import math
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..device import resolve_device
from ..errors import ProbeError

# The linear probe is solved by full-batch L-BFGS by default (probe.heads.solver).  With
# solver="sgd" it is the MAE / l-DAE recipe: SGD with momentum on a convex problem,
# the whole cosine schedule, the last epoch.  Its convergence depends on the number of
# steps, not epochs: on small sets it trains for at least MIN_LINEAR_STEPS.  So it lands
# within about a point of scikit-learn's logistic regression (benchmarks/
# RESULTS.md, Heads); AdamW, 30 epochs, a few hundred steps, or picking the epoch on a
# small validation split all cost one to seven points on ill-conditioned features.
# The other heads train as small networks do, with early stopping.
HEAD_DEFAULTS = {"linear": dict(optimizer="sgd", lr=0.3, weight_decay=0.0, epochs=100,
                                patience=0)}
OTHER_DEFAULTS = dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, epochs=30, patience=None)
OPTIMIZER_DEFAULTS = {"sgd": dict(lr=0.1, weight_decay=0.0),
                      "adamw": dict(lr=1e-3, weight_decay=0.05)}
MIN_LINEAR_STEPS = 4000
SOLVERS = ("lbfgs", "sgd")  # of the linear head: full-batch L-BFGS (default) or the MAE recipe


def _l2_values(l2):
    """One l2 value (a float) or several (a tuple), each checked to be a number >= 0."""
    values = [l2] if isinstance(l2, (int, float)) else list(l2)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ProbeError(f"bad --l2 {l2!r}: give a number, or several, e.g. --l2 1e-4 or "
                         "--l2 1e-5,1e-4,1e-3") from None
    if not values or min(values) < 0 or not all(math.isfinite(v) for v in values):
        raise ProbeError(f"bad --l2 {l2!r}: the values must be finite and >= 0")
    return values[0] if len(values) == 1 else tuple(values)


@dataclass
class TrainConfig:
    epochs: int | None = None         # None: 30; linear: 100, more on small sets (>= 4000 steps)
    batch_size: int = 256
    optimizer: str | None = None      # adamw | sgd (momentum 0.9); None: sgd for linear, else adamw
    lr: float | None = None           # None: 0.3 for linear (sgd); else 0.1 (sgd), 1e-3 (adamw)
    weight_decay: float | None = None  # None: 0 (sgd), 0.05 (adamw); never on biases/norms/tokens
    warmup_epochs: float | None = 1.0  # linear warmup, then cosine to 0
    patience: int | None = None       # early stopping: epochs without a better validation
                                      # top-1 or loss; 0: off (keep the last epoch);
                                      # None: 0 for linear, else a quarter of the epochs (>= 5)
    val_fraction: float = 0.1         # carved from train, stratified, by `seed`
    seed: int = 0
    device: str | None = None         # None: cuda if available, else cpu
    memory_limit_gb: float = 2.0      # features larger than this are streamed from the file
    stream: bool | None = None        # None: decide by memory_limit_gb
    # the linear head only (see probe.heads.solver); with lbfgs, epochs, optimizer, lr,
    # weight_decay, warmup_epochs and patience do not apply (batch_size: evaluation only)
    solver: str | None = None         # lbfgs (full-batch, the default) | sgd (the MAE recipe)
    l2: float | tuple | None = None   # lbfgs: (l2/2)|W|^2 added to the mean cross-entropy;
                                      # None: chosen on the validation split along
                                      # solver.L2_PATH; several values: chosen among them
    max_iter: int | None = 1000       # lbfgs: iterations per l2 value
    tol: float | None = 1e-4          # lbfgs: stop when no gradient entry, nor the decrease
                                      # the next step predicts, exceeds this

    def resolved(self) -> TrainConfig:
        """A copy with values checked and the device chosen."""
        c = copy.copy(self)
        if c.optimizer is not None and c.optimizer not in OPTIMIZER_DEFAULTS:
            raise ProbeError(f"unknown optimizer {c.optimizer!r}: use adamw or sgd")
        if c.solver is not None and c.solver not in SOLVERS:
            raise ProbeError(f"unknown solver {c.solver!r}: use lbfgs or sgd")
        if c.l2 is not None:
            c.l2 = _l2_values(c.l2)
        if c.tol is None or not c.tol > 0:
            raise ProbeError("--tol must be positive")
        c.device = str(resolve_device(c.device))
        for name, low in (("epochs", 1), ("batch_size", 2), ("patience", 0), ("max_iter", 1)):
            if getattr(c, name) is not None and int(getattr(c, name)) < low:
                raise ProbeError(f"--{name.replace('_', '-')} must be at least {low}")
        if not 0 <= c.val_fraction < 1:
            raise ProbeError("--val-fraction must be in [0, 1)")
        if c.memory_limit_gb <= 0:
            raise ProbeError("--memory-limit must be positive (GB)")
        return c

    def for_head(self, head: str, num_train: int) -> TrainConfig:
        """A copy with the optimiser, learning rate, weight decay, epochs and patience
        filled in for ``head`` trained on ``num_train`` samples; for the linear head with
        lbfgs, the solver and None for those (it has no epochs)."""
        c = copy.copy(self)
        if head == "linear" and c.solver in (None, "lbfgs"):
            # no optimiser, schedule or epochs: None in the saved settings
            c.solver = "lbfgs"
            c.epochs = c.optimizer = c.lr = c.weight_decay = c.warmup_epochs = c.patience = None
            return c
        c.solver = "sgd" if head == "linear" else None
        c.l2 = c.max_iter = c.tol = None
        base: dict[str, Any] = dict(HEAD_DEFAULTS.get(head, OTHER_DEFAULTS))
        if head == "linear":
            steps = max(1, math.ceil(num_train / self.batch_size))
            base["epochs"] = max(base["epochs"], math.ceil(MIN_LINEAR_STEPS / steps))
        c.optimizer = c.optimizer or base["optimizer"]
        opt = base if c.optimizer == base["optimizer"] else OPTIMIZER_DEFAULTS[c.optimizer]
        c.lr = opt["lr"] if c.lr is None else float(c.lr)
        c.weight_decay = opt["weight_decay"] if c.weight_decay is None else float(c.weight_decay)
        c.epochs = base["epochs"] if c.epochs is None else int(c.epochs)
        if c.patience is None:
            c.patience = base["patience"] if base["patience"] is not None else max(5, c.epochs // 4)
        c.patience = int(c.patience)
        return c

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def head_seed(seed: int, key: Sequence[Any], head: str) -> int:
    """The init seed of one head: fixed by (seed, key, head), not by what else trains."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{key[0]}/{key[1]}/{head}".encode())) % (2 ** 63)


class Unit:
    """``module`` maps ``{view: tensor}`` to one logits tensor per member; ``views[i]`` is
    member i's input, unless ``members`` says how many there are (a fusion head: one member
    reading every view); ``snapshot(i)`` copies member i out as a standalone head."""

    def __init__(self, module: torch.nn.Module, views: Sequence[Any],
                 snapshot: Callable[[Any, int], Any], members: int | None = None) -> None:
        self.module, self.views, self._snapshot = module, list(views), snapshot
        self.members = len(self.views) if members is None else members

    def __call__(self, batch: dict[Any, torch.Tensor]) -> list[torch.Tensor]:
        return self.module([batch[v] for v in self.views])

    def snapshot(self, i: int) -> Any:
        return self._snapshot(self.module, i)


def single_unit(head: torch.nn.Module, view: Any) -> Unit:
    return Unit(_Single(head), [view], lambda m, i: copy.deepcopy(m.head).eval())


class _Single(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.head(xs[0])]


def _param_groups(modules, weight_decay):
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for m in modules:
        for name, p in m.named_parameters():
            # biases, norm scales, CLS and position tokens are not shrunk (as timm/MAE)
            flat = p.ndim <= 1 or name.endswith("bias") or "biases" in name or "token" in name \
                or "pos_embed" in name
            (no_decay if flat else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(modules: Sequence[torch.nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg`` filled in by :meth:`TrainConfig.for_head`."""
    assert cfg.lr is not None and cfg.weight_decay is not None, \
        "cfg is filled in by TrainConfig.for_head"
    groups = _param_groups(modules, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


@torch.no_grad()
def predict(models: Sequence[tuple[Any, torch.nn.Module]], source: Any, rows: np.ndarray,
            batch_size: int, device: torch.device) -> list[np.ndarray]:
    """Softmax scores of each ``(view, module)`` pair over ``rows``, in one pass."""
    views = list(dict.fromkeys(v for v, _ in models))
    out: list[list[np.ndarray]] = [[] for _ in models]
    for m in {id(m): m for _, m in models}.values():
        m.eval()
    for batch, _ in source.eval_batches(rows, batch_size, views, device=device):
        for i, (v, m) in enumerate(models):
            # to the host batch by batch: a test set's scores need not fit on the device
            out[i].append(F.softmax(m(batch[v]).float(), dim=1).cpu().numpy())
    return [np.concatenate(o) if o else np.zeros((0, 0), np.float32) for o in out]


@torch.no_grad()
def _val_top1(units, source, rows, batch_size, device):
    """Per unit, per member: (top-1, mean loss) on ``rows``.  Batch results stay on the
    device until the end (no sync per batch); the loss is summed in float64 on the host,
    batch by batch (MPS has no float64)."""
    views = list(dict.fromkeys(v for u in units for v in u.views))
    correct: list[list[torch.Tensor]] = [[] for _ in units]  # per unit, per batch: (members,)
    losses: list[list[torch.Tensor]] = [[] for _ in units]
    for u in units:
        u.module.eval()
    for batch, y in source.eval_batches(rows, batch_size, views, device=device):
        for k, u in enumerate(units):
            zs = u(batch)
            correct[k].append(torch.stack([(z.argmax(1) == y).sum() for z in zs]))
            losses[k].append(torch.stack([F.cross_entropy(z.float(), y, reduction="sum")
                                          for z in zs]))
    n = max(len(rows), 1)
    out = []
    for u, c, l in zip(units, correct, losses):
        if not c:
            out.append([(0.0, 0.0)] * u.members)
            continue
        hits = torch.stack(c).cpu().numpy().sum(0)
        loss = np.zeros(u.members)
        for part in torch.stack(l).cpu().numpy().astype(np.float64):
            loss += part
        out.append(list(zip((hits / n).tolist(), (loss / n).tolist())))
    return out


class _Kept:
    """The tensors of a one-member unit at its best epoch (see :func:`_keep`)."""

    def __init__(self, module):
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}


def _keep(unit, i, members):
    """Member ``i`` as it is now.  A one-member unit keeps a copy of its tensors, and its
    head is built from them once, at the end (:func:`_head`): deep-copying a module at
    every improvement cost up to 15% of an MLP's epoch.  A grid's members export cheaply."""
    return _Kept(unit.module) if members == 1 else unit.snapshot(i)


def _head(unit, i, kept):
    if not isinstance(kept, _Kept):
        return kept
    unit.module.load_state_dict(kept.state)  # training is over: the unit is not used again
    return unit.snapshot(i)


def train_pass(units: Sequence[Unit], source: Any, train_rows: np.ndarray, val_rows: np.ndarray,
               cfg: TrainConfig, progress: bool = True, desc: str = "train",
               from_start: bool = False) -> tuple[list[list[dict[str, Any]]], float]:
    """Train ``units`` together, sharing every batch (``cfg`` filled in by
    :meth:`TrainConfig.for_head`).  Returns (per unit, a list of per-member dicts: the
    chosen ``head``, its ``val_top1``, ``val_loss`` and ``selected_epoch``, and
    ``epochs_run``; the wall time of the pass).

    With ``cfg.patience`` > 0 each member keeps the epoch with the best validation top-1
    (ties: lower loss) and stops once neither its top-1 nor its loss has improved for
    ``patience`` epochs.  With 0 it trains the whole schedule and keeps the last epoch.
    ``from_start``: for units that start from a solution (the fusion head's warm start):
    the state before training is a candidate too (epoch 0), and each member keeps the
    epoch of the lowest validation loss, which moves by less than top-1 with noise on a
    small split (200 images: top-1 is +-6 points), so training keeps the start unless
    the loss says it gains.
    """
    assert cfg.epochs is not None and cfg.patience is not None and cfg.warmup_epochs is not None, \
        "cfg is filled in by TrainConfig.for_head"
    device = torch.device(str(cfg.device))
    for u in units:
        u.module.to(device)
    opt = make_optimizer([u.module for u in units], cfg)
    steps = math.ceil(len(train_rows) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.epochs * steps, round(cfg.warmup_epochs * steps)))
    early = cfg.patience > 0 and len(val_rows) > 0
    state: list[list[dict[str, Any]]] = [[dict(head=None, val_top1=None, val_loss=None, selected_epoch=None, epochs_run=0,
                   stopped=False, min_loss=math.inf, improved=0)
              for _ in range(u.members)] for u in units]
    active = list(range(len(units)))
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    start = time.perf_counter()
    if early and from_start:
        vals = _val_top1(units, source, val_rows, cfg.batch_size, device)
        for j, val in enumerate(vals):
            for i, (top1, loss) in enumerate(val):
                _update(state[j][i], units[j], i, len(state[j]), 0, top1, loss, early,
                        cfg.patience, by_loss=True)
    for epoch in bar:
        views = list(dict.fromkeys(v for j in active for v in units[j].views))
        for j in active:
            units[j].module.train()
        # batches come as tensors on the device, sliced there from features held in memory
        for batch, y in source.epoch_batches(train_rows, cfg.batch_size, cfg.seed, epoch, views,
                                             device=device):
            opt.zero_grad(set_to_none=True)  # stopped units get no grad, so no update
            for j in active:
                # forward and backward one unit at a time, while its inputs are in cache;
                # units share no parameters, so each gets exactly its own loss's gradient
                zs = units[j](batch)
                torch.stack([F.cross_entropy(z, y) for z in zs]).sum().backward()
            opt.step()
            sched.step()
        for j in active:
            for s in state[j]:
                s["epochs_run"] = s["epochs_run"] if s["stopped"] else epoch + 1
        last = epoch + 1 == cfg.epochs
        if early or last:
            vals = (_val_top1([units[j] for j in active], source, val_rows, cfg.batch_size, device)
                    if len(val_rows) else [[(None, None)] * len(state[j]) for j in active])
            for j, val in zip(active, vals):
                for i, (top1, loss) in enumerate(val):
                    _update(state[j][i], units[j], i, len(state[j]), epoch + 1, top1, loss,
                            early, cfg.patience, by_loss=from_start)
        active = [j for j in active if not all(s["stopped"] for s in state[j])]
        if early and progress:
            best = max(s["val_top1"] for st in state for s in st)
            bar.set_postfix(val_top1=f"{best:.3f}", training=f"{len(active)}/{len(units)}")
        if not active:
            break
    bar.close()
    for u, st in zip(units, state):
        for i, s in enumerate(st):
            s["head"] = _head(u, i, s["head"])
            for k in ("stopped", "min_loss", "improved"):
                s.pop(k)
    return state, time.perf_counter() - start


def _update(s, unit, i, members, epoch, top1, loss, early, patience, by_loss=False):
    """Early-stopping bookkeeping of one member after an epoch's validation; ``by_loss``:
    keep the epoch of the lowest loss (see :func:`train_pass`'s ``from_start``)."""
    if s["stopped"]:
        return
    if not early:  # the whole schedule: keep the last epoch
        s.update(head=_keep(unit, i, members), val_top1=top1, val_loss=loss, selected_epoch=epoch)
        return
    # keep the best top-1; among equal top-1s the lower loss (small validation sets
    # saturate, and the first epoch to reach a top-1 is rarely the best)
    better = (s["head"] is None or (loss < s["val_loss"] if by_loss else
                                    (top1, -loss) > (s["val_top1"], -s["val_loss"])))
    if better:
        s.update(head=_keep(unit, i, members), val_top1=top1, val_loss=loss,
                 selected_epoch=epoch, improved=epoch)
    if loss < s["min_loss"]:  # a falling loss: the head is still converging
        s.update(min_loss=loss, improved=epoch)
    if epoch - s["improved"] >= patience:
        s["stopped"] = True
