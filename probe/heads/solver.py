"""The linear probe solved as the convex problem it is: full-batch L-BFGS.

At eval the linear head is z = (x - mean) / sqrt(var + eps) with the training rows'
statistics (BatchNorm without affine), then logits W z + b.  So it is a multinomial
logistic regression on standardised features, and this module minimises

    mean_i CE(softmax(W z_i + b), y_i) + (l2 / 2) |W|^2        (the bias is not penalised)

to convergence and exports the result as a :class:`~probe.heads.linear.LinearHead`.

- **scikit-learn.**  ``LogisticRegression(C)`` (lbfgs, multinomial) minimises
  C sum_i CE_i + |W|^2 / 2, also without penalising the intercept: n C times our
  objective when l2 = 1 / (n C), n the number of training rows.  Same minimiser.  With
  two classes it fits the single vector w1 - w0, and the match is l2 = 2 / (n C).
- **Keys.**  Keys of equal width are one batched problem, weights stacked as
  (keys, K, D+1) with the bias last.  Keys are independent, so each keeps its own L-BFGS
  state (:mod:`.lbfgs`); every pass over the data serves every key still running.
  Logits come out as (K, rows): with few classes, the products run 2-10x faster on the
  CPU in that layout than as (rows, K).
- **Preconditioner.**  Standardised features can still be ill-conditioned (condition
  number 3e7 on the demo features).  L-BFGS starts from the Kronecker-factored Hessian,
  the mean softmax curvature (K, K) times the features' correlation matrix (D, D): on
  those features, 350 iterations for the whole path where plain L-BFGS took 4,200.
- **l2.**  Unless given, l2 is chosen on the validation split along L2_PATH, strongest
  first, each value warm-started from the previous solution and its curvature pairs and
  solved to PATH_TOL_FACTOR * tol; the chosen value is then solved to tol.  The choice is
  the lowest validation loss: on a few hundred validation samples top-1 is too coarse
  (choosing by it cost 0.7 points of test top-1 on average on the demo set, up to 3).
- **Memory.**  The standardised training rows are held on the device when the features
  were loaded in memory; when they are streamed, every pass reads them from the file in
  chunks and the gradient is accumulated over the chunks.
"""
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import ProbeError
from .data import READ_BYTES
from .lbfgs import keep_state, lbfgs, new_state
from .linear import EPS, LinearHead

L2_PATH = tuple(float(v) for v in np.logspace(-1, -6, 11))
PATH_PATIENCE = 2      # path values without a lower validation loss before the path stops
PATH_TOL_FACTOR = 10   # the path solves to 10 * tol; the chosen l2 is then solved to tol
SIGMA_ROWS = 16384     # rows (evenly strided) for the preconditioner's correlation matrix
CPU_CHUNK_BYTES = 4 << 20  # rows per chunk on the CPU: about this much of one view
SMALL_PRODUCT = 1 << 25  # multiply-adds per chunk and key below which one CPU thread runs
LOG_FLOOR = -50.0      # log-probabilities are raised to this before exp (see _probabilities)
Index = Union[Sequence[int], np.ndarray]  # positions of keys


class Rows:
    """Standardised rows of some views, served as chunks of device tensors: held once
    when the source holds its features in memory, else read from the file every pass.
    On the CPU the chunks are of about CPU_CHUNK_BYTES per view, so that the backward
    product reads a chunk from cache, not from memory, right after the forward one."""

    def __init__(self, source: Any, views: Sequence[Any], rows: np.ndarray,
                 stats: Sequence[tuple[torch.Tensor, torch.Tensor]], device: Any,
                 dtype: torch.dtype) -> None:
        self.source, self.views, self.rows = source, list(views), np.asarray(rows)
        self.stats, self.device, self.dtype = stats, torch.device(device), dtype
        width = max(int(s[0].shape[0]) for s in stats) * torch.finfo(dtype).bits // 8
        self.step = (max(256, CPU_CHUNK_BYTES // width) if self.device.type == "cpu"
                     else max(1, len(self.rows)))
        self.held: tuple[list[torch.Tensor], torch.Tensor] | None = None
        if not source.streamed:  # one view at a time: a single transient copy
            y = torch.from_numpy(np.asarray(source.ff.labels, dtype=np.int64)[self.rows])
            self.held = ([self._standardise(i, source.arrays[v][self.rows])
                          for i, v in enumerate(self.views)], y.to(self.device))

    def _standardise(self, i, x):
        mean, scale = self.stats[i]
        x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)
        return x.sub_(mean).mul_(scale)

    def _blocks(self, idx):
        if self.held is not None:
            yield [self.held[0][i] for i in idx], self.held[1]
            return
        views = [self.views[i] for i in idx]
        for xs, y in self.source.eval_batches(self.rows, self.source.window_rows, views):
            yield ([self._standardise(i, xs[v]) for i, v in zip(idx, views)],
                   torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device))

    def chunks(self, idx: Index) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """Yield (one (rows, D) tensor per view in ``idx``, labels)."""
        for zs, y in self._blocks(idx):
            for a in range(0, len(y), self.step):
                yield [z[a:a + self.step] for z in zs], y[a:a + self.step]


def moments(source: Any, views: Sequence[Any], rows: np.ndarray, device: torch.device
            ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per view: mean and population variance over ``rows`` (float64, exact when
    streamed too), and the correlation matrix of the standardised features over an evenly
    strided subset of at most SIGMA_ROWS rows."""
    # streamed: chunks that fit the memory limit; in memory: a few tens of MB at a time
    chunk = source.window_rows if source.streamed else max(1, READ_BYTES // source.row_bytes)
    dev: dict[str, Any] = dict(device=device, dtype=torch.float64)
    sums: list[Any] = [0.0] * len(views)  # float 0, then a tensor
    for xs, _ in source.eval_batches(rows, chunk, views):
        for i, v in enumerate(views):
            sums[i] = sums[i] + torch.from_numpy(xs[v]).to(**dev).sum(0)
    means = [s / len(rows) for s in sums]
    stride = max(1, math.ceil(len(rows) / SIGMA_ROWS))
    sq: list[Any] = [0.0] * len(views)
    cross: list[Any] = [0.0] * len(views)
    seen = 0
    for xs, _ in source.eval_batches(rows, chunk, views):
        first = -seen % stride  # keep rows seen + first, +stride, ... of the whole pass
        for i, v in enumerate(views):
            x = torch.from_numpy(xs[v]).to(device) - means[i].float()
            sq[i] = sq[i] + x.square().sum(0, dtype=torch.float64)
            sub = x[first::stride]
            cross[i] = cross[i] + (sub.t() @ sub).double()
        seen += len(xs[views[0]])
    out = []
    for mean, s, c in zip(means, sq, cross):
        var = s / len(rows)
        scale = 1 / torch.sqrt(var + EPS)
        corr = c / math.ceil(len(rows) / stride) * scale[:, None] * scale[None, :]
        out.append((mean, var, corr))
    return out


def _probabilities(logp):
    """exp(logp) in place, with log-probabilities below LOG_FLOOR raised to it: exp would
    return denormal numbers for them (a confident probe's are often below -87), which the
    CPU computes 400x slower, and so would the products that use them.  The gradient
    changes by at most K exp(LOG_FLOOR) = 1e-21 per sample."""
    return logp.clamp_(min=LOG_FLOOR).exp_()


def loss_grad(data: Rows, P: torch.Tensor, idx: Index, l2: torch.Tensor, n: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective and gradient for the keys ``idx`` of ``data``, at P (len(idx), K, D+1)
    and l2 (len(idx),)."""
    # the loss adds up in float64: near the optimum the line search compares losses that
    # differ by less than float32 resolves
    f = torch.zeros(len(idx), dtype=torch.float64, device=P.device)
    G = torch.zeros_like(P)
    for zs, y in data.chunks(idx):
        rows = torch.arange(len(y), device=y.device)
        for j, z in enumerate(zs):
            logp = F.log_softmax(torch.addmm(P[j, :, -1:], P[j, :, :-1], z.t()), dim=0)
            f[j] -= logp[y, rows].sum(dtype=torch.float64)
            r = _probabilities(logp)
            r[y, rows] -= 1  # d CE / d logits = softmax - one-hot
            G[j, :, :-1].addmm_(r, z)
            G[j, :, -1] += r.sum(1)
    W = P[:, :, :-1]
    f = f / n + l2.double() / 2 * W.square().sum((1, 2), dtype=torch.float64)
    G /= n
    G[:, :, :-1] += l2[:, None, None] * W
    return f, G


def kfac_preconditioner(vecs: torch.Tensor, vals: torch.Tensor, avecs: torch.Tensor,
                        avals: torch.Tensor, l2: torch.Tensor
                        ) -> Callable[[torch.Tensor], torch.Tensor]:
    """q -> (A x Sigma + l2)^-1 q per key, the Kronecker-factored Hessian: A (K, K) the
    mean Hessian of the softmax loss in the logits, Sigma (D+1, D+1) the second moment of
    the standardised features with a bias entry 1 (no l2 on the bias).  Both are given by
    their eigenvectors and eigenvalues (``vecs``, ``vals``: Sigma's feature block)."""
    # A is singular along (1, ..., 1): a constant added to every logit changes nothing;
    # a floor keeps that direction finite
    a = avals.clamp_min(0).clamp_min(avals.amax(1, keepdim=True) * 1e-3)
    den_w = a[:, :, None] * vals.clamp_min(0)[:, None, :] + l2[:, None, None]
    den_b = a[:, :, None]

    def apply(q: torch.Tensor) -> torch.Tensor:
        q = torch.bmm(avecs.transpose(1, 2), q)
        w = torch.bmm(torch.bmm(q[:, :, :-1], vecs) / den_w, vecs.transpose(1, 2))
        return torch.bmm(avecs, torch.cat([w, q[:, :, -1:] / den_b], 2))
    return apply


@torch.no_grad()
def class_curvature(data: Rows, P: torch.Tensor, idx: Index
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key in ``idx``: the mean over rows of diag(p) - p p^T, p the softmax of the
    logits at P, as (eigenvectors, eigenvalues)."""
    K = P.shape[1]
    A = torch.zeros(len(idx), K, K, dtype=P.dtype, device=P.device)
    count = 0
    for zs, y in data.chunks(idx):
        for j, z in enumerate(zs):
            p = _probabilities(F.log_softmax(torch.addmm(P[j, :, -1:], P[j, :, :-1], z.t()), 0))
            A[j] += torch.diag(p.sum(1)) - p @ p.t()
        count += len(y)
    vals, vecs = torch.linalg.eigh(A.double() / max(count, 1))
    return vecs.to(P.dtype), vals.to(P.dtype)


@torch.no_grad()
def evaluate(data: Rows, P: torch.Tensor, idx: Index) -> tuple[list[float], list[float]]:
    """(top-1, mean cross-entropy) of each key in ``idx`` over the rows of ``data``."""
    correct = torch.zeros(len(idx), dtype=torch.float64)
    loss = torch.zeros(len(idx), dtype=torch.float64)
    count = 0
    for zs, y in data.chunks(idx):
        for j, z in enumerate(zs):
            logits = torch.addmm(P[j, :, -1:], P[j, :, :-1], z.t())
            correct[j] += (logits.argmax(0) == y).sum().item()
            loss[j] += F.cross_entropy(logits.t(), y, reduction="sum").item()
        count += len(y)
    return (correct / max(count, 1)).tolist(), (loss / max(count, 1)).tolist()


def l2_path(l2: float | Sequence[float] | None, num_val: int) -> tuple[list[float], bool]:
    """(the l2 values to solve for, strongest first; whether to choose among them on the
    validation split).  ``l2``: None (L2_PATH), one value, or several."""
    values = L2_PATH if l2 is None else sorted({float(v) for v in np.atleast_1d(l2)}, reverse=True)
    if len(values) > 1 and not num_val:
        raise ProbeError("the linear head chooses --l2 on the validation split, which is empty "
                         "(--val-fraction 0): give a single --l2 value or a --val-fraction above 0")
    return list(values), len(values) > 1


def _reweigh(state, change):
    """Curvature pairs of the previous l2, made exact for the next: the objective moved by
    change/2 |W|^2, so each gradient difference y moves by change * s on the weights (a
    pair whose curvature is no longer positive is dropped)."""
    S, Y = state["S"], state["Y"]
    Y[..., :-1] += change[:, None, None, None] * S[..., :-1]
    sy = (S * Y).sum((2, 3))
    state["rho"] = torch.where((state["rho"] > 0) & (sy > 0), 1 / sy, torch.zeros_like(sy))


def _solve(train, spectra, P, keys, l2, state, max_iter, tol):
    """L-BFGS for ``keys`` (indices into the group) from P at l2 (one value per key),
    preconditioned with the softmax curvature at P."""
    vecs, vals = spectra
    avecs, avals = class_curvature(train, P, keys)
    precond = kfac_preconditioner(vecs[keys], vals[keys], avecs, avals, l2)

    def fun(Q, idx):
        return loss_grad(train, Q, keys[idx], l2[idx], len(train.rows))
    return lbfgs(fun, P, precond, state, max_iter, tol)


def _record(l2, top1, loss, iters, passes, met):
    return dict(l2=l2, val_top1=top1, val_loss=loss, iterations=int(iters),
                data_passes=int(passes), converged=bool(met))


def solve_path(train: Rows, val: Rows | None, corr: list[torch.Tensor], num_classes: int,
               path: Sequence[float], choose: bool, cfg: Any, bar: Any) -> list[dict[str, Any]]:
    """Solve one group of keys of equal width along ``path`` (to PATH_TOL_FACTOR * tol
    when choosing on validation), then the chosen l2 of each key to tol.  Returns per key
    a dict: ``P`` (K, D+1), the ``final`` record and a ``path`` of records."""
    dtype, device = train.dtype, train.device
    vals, vecs = torch.linalg.eigh(torch.stack(corr))
    spectra = (vecs.to(dtype), vals.to(dtype))
    P = torch.zeros(len(corr), num_classes, corr[0].shape[0] + 1, dtype=dtype, device=device)
    state = new_state(P)
    out: list[dict[str, Any]] = [dict(P=None, l2=None, loss=math.inf, since=0, path=[])
                                 for _ in corr]
    live, previous = np.arange(len(corr)), None
    tol = cfg.tol * PATH_TOL_FACTOR if choose else cfg.tol
    for l2 in path:
        l2s = torch.full((len(live),), l2, dtype=dtype, device=device)
        if previous is not None:
            _reweigh(state, l2s - previous)
        P[live], _, iters, passes, met = _solve(train, spectra, P[live], live, l2s, state,
                                                cfg.max_iter, tol)
        top1, loss = evaluate(val, P[live], live) if val is not None else ([None] * len(live),) * 2
        keep = []
        for j, k in enumerate(live):
            o = out[k]
            o["path"].append(_record(l2, top1[j], loss[j], iters[j], passes[j], met[j]))
            if not choose or loss[j] < o["loss"]:
                o.update(P=P[k].clone(), l2=l2, loss=loss[j], since=0, final=o["path"][-1])
            else:
                o["since"] += 1
            if o["since"] < PATH_PATIENCE:
                keep.append(j)
        bar.update(1)
        state, live, previous = keep_state(state, keep), live[keep], l2
        if not len(live):
            break
    if choose:
        _refine(train, val, spectra, out, cfg)
    bar.update(1)
    return out


def _refine(train, val, spectra, out, cfg):
    """Solve each key's chosen l2 to ``cfg.tol``, from its path solution."""
    every = np.arange(len(out))
    P = torch.stack([o["P"] for o in out])
    l2 = torch.tensor([o["l2"] for o in out], dtype=P.dtype, device=P.device)
    P, _, iters, passes, met = _solve(train, spectra, P, every, l2, new_state(P),
                                      cfg.max_iter, cfg.tol)
    top1, loss = evaluate(val, P, every)
    for k, o in enumerate(out):
        o.update(P=P[k], final=_record(o["l2"], top1[k], loss[k], iters[k], passes[k], met[k]))


def export_head(mean: torch.Tensor, var: torch.Tensor, P: torch.Tensor) -> LinearHead:
    """A :class:`LinearHead` that computes what the solver solved: BatchNorm's eval with
    the training statistics, then the weights (the bias centred, which softmax ignores)."""
    head = LinearHead(P.shape[1] - 1, P.shape[0])
    assert head.norm.running_mean is not None and head.norm.running_var is not None
    with torch.no_grad():
        head.norm.running_mean.copy_(mean)
        head.norm.running_var.copy_(var)
        head.fc.weight.copy_(P[:, :-1])
        head.fc.bias.copy_(P[:, -1] - P[:, -1].mean())
    return head.to(P.device).eval()


@contextlib.contextmanager
def _threads(multiply_adds, device):
    """One CPU thread when each product is small (about 10 classes): a product of a 4 MB
    chunk then takes 0.4 ms on one thread, and 4-9 ms on two when another job holds a core
    (the threads wait on each other).  On an idle machine two threads gain at most 1.5x."""
    before = torch.get_num_threads()
    small = device.type == "cpu" and multiply_adds < SMALL_PRODUCT
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def fit_linear(source: Any, views: Sequence[Any], dims: Sequence[int], train_rows: np.ndarray,
               val_rows: np.ndarray, num_classes: int, cfg: Any, progress: bool = True,
               desc: str = "linear", dtype: torch.dtype = torch.float32
               ) -> tuple[list[dict[str, Any]], float]:
    """Linear probes on ``views`` (vectors of widths ``dims``) by full-batch L-BFGS, the
    keys of each width solved together.  ``cfg``: a TrainConfig filled in for the linear
    head (device, l2, max_iter, tol).  Returns (per view a dict: ``head``, ``val_top1``,
    ``val_loss``, ``l2`` and a JSON-ready ``solver`` record; the wall time)."""
    start = time.perf_counter()
    device = torch.device(cfg.device)
    path, choose = l2_path(cfg.l2, len(val_rows))
    groups: dict[int, list[int]] = {}
    for i, d in enumerate(dims):
        groups.setdefault(d, []).append(i)
    results: list[Any] = [None] * len(views)
    bar = tqdm(total=(len(path) + 1) * len(groups), desc=desc, unit="l2",
               disable=not progress, leave=False)
    for width, members in groups.items():
        chunk = min(len(train_rows), CPU_CHUNK_BYTES // (4 * width))
        with _threads(chunk * width * num_classes, device):
            solved = _solve_group(source, [views[i] for i in members], train_rows, val_rows,
                                  num_classes, cfg, (path, choose), bar, dtype)
        for i, r in zip(members, solved):
            results[i] = r
    bar.close()
    return results, time.perf_counter() - start


def _solve_group(source, views, train_rows, val_rows, num_classes, cfg, path, bar, dtype):
    """fit_linear's results for keys of one width."""
    path, choose = path
    device = torch.device(cfg.device)
    stats = moments(source, views, train_rows, device)
    scaled = [(m.to(dtype), (1 / torch.sqrt(v + EPS)).to(dtype)) for m, v, _ in stats]
    train = Rows(source, views, train_rows, scaled, device, dtype)
    val = Rows(source, views, val_rows, scaled, device, dtype) if len(val_rows) else None
    solved = solve_path(train, val, [c for _, _, c in stats], num_classes, path, choose, cfg,
                        bar)
    results = []
    for (mean, var, _), o in zip(stats, solved):
        final = o["final"]
        steps = o["path"] + ([final] if choose else [])
        results.append(dict(
            head=export_head(mean, var, o["P"]), l2=o["l2"],
            val_top1=final["val_top1"], val_loss=final["val_loss"],
            solver=dict(name="lbfgs", l2=o["l2"],
                        chosen_on="validation loss" if choose else "given",
                        converged=final["converged"], tol=cfg.tol,
                        path_tol=cfg.tol * PATH_TOL_FACTOR if choose else None,
                        max_iter=cfg.max_iter, path=o["path"], final=final if choose else None,
                        iterations=sum(r["iterations"] for r in steps),
                        data_passes=sum(r["data_passes"] for r in steps))))
    return results
