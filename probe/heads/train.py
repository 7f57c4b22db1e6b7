"""The training loop for heads on cached features.

Several *units* train in one pass over the data, sharing every batch: a unit is a
module that returns one logits tensor per *member* (a :class:`LinearGrid` has one member
per key; any other head is a unit with one member).  Each member keeps its own
early-stopping state, and each head's start is seeded by (seed, key, head), so a head
trained in a grid ends exactly where it would alone (up to float rounding in the
stacked linear grid).
"""
import copy
import math
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import ProbeError

# the linear probe is a convex problem on normalised inputs and takes a larger step
DEFAULT_LR = {"adamw": {"linear": 1e-2, "other": 1e-3}, "sgd": {"linear": 0.1, "other": 0.01}}
DEFAULT_WD = {"adamw": 0.05, "sgd": 0.0}


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    optimizer: str = "adamw"          # adamw | sgd (momentum 0.9)
    lr: float = None                  # None: adamw 1e-2 (linear) / 1e-3; sgd 0.1 (linear) / 0.01
    weight_decay: float = None        # None: 0.05 (adamw), 0 (sgd); never on biases/norms/tokens
    warmup_epochs: float = 1.0        # linear warmup, then cosine to 0
    patience: int = 8                 # epochs without a better validation top-1 before stopping
    val_fraction: float = 0.1         # carved from train, stratified, by `seed`
    seed: int = 0
    device: str = None                # None: cuda if available, else cpu
    memory_limit_gb: float = 2.0      # features larger than this are streamed from the file
    stream: bool = None               # None: decide by memory_limit_gb

    def resolved(self):
        """A copy with defaults filled in and values checked."""
        c = copy.copy(self)
        if c.optimizer not in DEFAULT_LR:
            raise ProbeError(f"unknown optimizer {c.optimizer!r}: use adamw or sgd")
        c.lr = None if c.lr is None else float(c.lr)
        c.weight_decay = DEFAULT_WD[c.optimizer] if c.weight_decay is None else float(c.weight_decay)
        c.device = str(resolve_device(c.device))
        for name, low in (("epochs", 1), ("batch_size", 2), ("patience", 1)):
            if int(getattr(c, name)) < low:
                raise ProbeError(f"--{name.replace('_', '-')} must be at least {low}")
        if not 0 <= c.val_fraction < 1:
            raise ProbeError("--val-fraction must be in [0, 1)")
        if c.memory_limit_gb <= 0:
            raise ProbeError("--memory-limit must be positive (GB)")
        return c

    def as_dict(self):
        return asdict(self)

    def lr_for(self, head):
        table = DEFAULT_LR[self.optimizer]
        return self.lr if self.lr is not None else table.get(head, table["other"])


def resolve_device(device):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ProbeError(f"bad --device {device!r}: use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"--device {device} asked for but CUDA is not available: use --device cpu")
    return dev


def head_seed(seed, key, head):
    """The init seed of one head: fixed by (seed, key, head), not by what else trains."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{key[0]}/{key[1]}/{head}".encode())) % (2 ** 63)


class Unit:
    """``module`` maps ``{view: tensor}`` to one logits tensor per member; ``views[i]`` is
    member i's input; ``snapshot(i)`` copies member i out as a standalone head."""

    def __init__(self, module, views, snapshot, lr):
        self.module, self.views, self._snapshot, self.lr = module, list(views), snapshot, lr

    def __call__(self, batch):
        return self.module([batch[v] for v in self.views])

    def snapshot(self, i):
        return self._snapshot(self.module, i)


def single_unit(head, view, lr):
    return Unit(_Single(head), [view], lambda m, i: copy.deepcopy(m.head).eval(), lr)


class _Single(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, xs):
        return [self.head(xs[0])]


def _param_groups(units, weight_decay):
    groups = []
    for u in units:
        decay, no_decay = [], []
        for name, p in u.module.named_parameters():
            # biases, norm scales, CLS and position tokens are not shrunk (as timm/MAE)
            flat = p.ndim <= 1 or name.endswith("bias") or "biases" in name or "token" in name \
                or "pos_embed" in name
            (no_decay if flat else decay).append(p)
        groups += [{"params": decay, "weight_decay": weight_decay, "lr": u.lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": u.lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(units, cfg):
    groups = _param_groups(units, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    return torch.optim.AdamW(groups)


def warmup_cosine(total_steps, warmup_steps):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def _tensors(xs, device):
    return {v: torch.from_numpy(np.ascontiguousarray(x)).to(device) for v, x in xs.items()}


@torch.no_grad()
def predict(models, source, rows, batch_size, device):
    """Softmax scores of each ``(view, module)`` pair over ``rows``, in one pass."""
    views = list(dict.fromkeys(v for v, _ in models))
    out = [[] for _ in models]
    for m in {id(m): m for _, m in models}.values():
        m.eval()
    for xs, _ in source.eval_batches(rows, batch_size, views):
        batch = _tensors(xs, device)
        for i, (v, m) in enumerate(models):
            out[i].append(F.softmax(m(batch[v]).float(), dim=1).cpu().numpy())
    return [np.concatenate(o) if o else np.zeros((0, 0), np.float32) for o in out]


@torch.no_grad()
def _val_top1(units, source, rows, batch_size, device):
    views = list(dict.fromkeys(v for u in units for v in u.views))
    correct = [np.zeros(len(u.views)) for u in units]
    loss = [np.zeros(len(u.views)) for u in units]
    for u in units:
        u.module.eval()
    for xs, y in source.eval_batches(rows, batch_size, views):
        batch, y = _tensors(xs, device), torch.from_numpy(y).to(device)
        for u, c, l in zip(units, correct, loss):
            for i, z in enumerate(u(batch)):
                c[i] += (z.argmax(1) == y).sum().item()
                l[i] += F.cross_entropy(z.float(), y, reduction="sum").item()
    n = max(len(rows), 1)
    return [list(zip(c / n, l / n)) for c, l in zip(correct, loss)]


def train_pass(units, source, train_rows, val_rows, cfg, progress=True, desc="train"):
    """Train ``units`` together; returns, per unit, a list of per-member dicts with the
    best head (``head``), ``best_val_top1``, ``best_epoch`` and ``epochs_run``, and the
    wall time of the pass."""
    device = torch.device(cfg.device)
    for u in units:
        u.module.to(device)
    opt = make_optimizer(units, cfg)
    steps = math.ceil(len(train_rows) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.epochs * steps, round(cfg.warmup_epochs * steps)))
    state = [[dict(head=None, best_val_top1=-1.0, best_val_loss=math.inf, best_epoch=-1,
                   epochs_run=0, stopped=False)
              for _ in u.views] for u in units]
    active = list(range(len(units)))
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    start = time.perf_counter()
    for epoch in bar:
        views = list(dict.fromkeys(v for j in active for v in units[j].views))
        for j in active:
            units[j].module.train()
        for xs, y in source.epoch_batches(train_rows, cfg.batch_size, cfg.seed, epoch, views):
            batch, y = _tensors(xs, device), torch.from_numpy(y).to(device)
            # members' losses are independent: the sum gives each its own gradient
            loss = sum(F.cross_entropy(z, y) for j in active for z in units[j](batch))
            opt.zero_grad(set_to_none=True)  # stopped units get no grad, so no update
            loss.backward()
            opt.step()
            sched.step()
        if len(val_rows):
            accs = _val_top1([units[j] for j in active], source, val_rows, cfg.batch_size, device)
        for j, acc in zip(active, accs if len(val_rows) else [None] * len(active)):
            for i, s in enumerate(state[j]):
                if s["stopped"]:
                    continue
                s["epochs_run"] = epoch + 1
                # better top-1, or the same top-1 with a lower loss (small validation sets
                # saturate, and the first epoch to reach a top-1 is rarely the best)
                if acc is None or (acc[i][0], -acc[i][1]) > (s["best_val_top1"], -s["best_val_loss"]):
                    s.update(head=units[j].snapshot(i), best_epoch=epoch + 1,
                             best_val_top1=None if acc is None else float(acc[i][0]),
                             best_val_loss=None if acc is None else float(acc[i][1]))
                elif epoch + 1 - s["best_epoch"] >= cfg.patience:
                    s["stopped"] = True
        active = [j for j in active if not all(s["stopped"] for s in state[j])]
        if progress and len(val_rows):
            best = [s["best_val_top1"] for st in state for s in st]
            bar.set_postfix(val_top1=f"{max(best):.3f}", training=f"{len(active)}/{len(units)}")
        if not active:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    for st in state:
        for s in st:
            s.pop("stopped")
    return state, elapsed
