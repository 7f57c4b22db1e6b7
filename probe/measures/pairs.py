"""Every (row key, column key) pair of :func:`probe.measures.similarity`, with its
permutation null and bootstrap interval.

Each key is read once into a prepared *side* (kernels, neighbour lists, RDM ranks or a
factor, see the measure modules), kept while they fit in ``CACHE_BYTES``.  The draws are
made once per run from ``seed`` and shared by every pair:

- a permutation null shuffles the samples of the column side; each measure turns that
  into a cheap relabelling of what it prepared once (a gather, not a recomputation);
- a bootstrap resamples the samples with replacement; each resample re-derives the
  measure from the prepared matrices (rows and columns picked, not features re-read).
"""
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ProbeError
from . import kernels, neighbours, rsa, subspace
from .reading import dims, read
from .result import DISTANCES, METRICS, SHIFTED_BY_RESAMPLING

FAMILIES = {"cka": kernels, "cka-unbiased": kernels, "cka-rbf": kernels, "rsa": rsa,
            "mutual-knn": neighbours, "cknna": neighbours, "procrustes": subspace,
            "svcca": subspace}
# one n x n float64 matrix is 0.5 GiB at this size; a pair holds a few of them at once
MAX_SAMPLES = 8192
# prepared keys kept in memory; past this, a key is prepared again each time it is used
CACHE_BYTES = 2 << 30
# the permuted copies of one side made at once (small stacks stay in cache: faster)
CHUNK_BYTES = 16 << 20
RSA_CORR = ("spearman", "pearson")
RDMS = ("correlation", "euclidean")


@dataclass(frozen=True)
class Options:
    metric: str
    k: int = 10
    sigma: float = 1.0
    rsa_corr: str = "spearman"
    rdm: str = "correlation"
    device: torch.device = torch.device("cpu")
    bootstrap: bool = False  # keep what the bootstrap resamples


def _count(name, v, least=0):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
        raise ProbeError(f"{name} must be a whole number of at least {least}, got {v!r}")
    return int(v)


def options(metric: str, k: int, sigma: float, rsa_corr: str, rdm: str,
            device: str | torch.device | None, bootstrap: int) -> Options:
    """The measure's settings, checked (each error names the flag to fix)."""
    from ..device import resolve_device

    if metric not in METRICS:
        raise ProbeError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    _count("--k", k, 2 if metric == "cknna" else 1)
    if metric == "cka-rbf" and not (np.isfinite(sigma) and sigma > 0):
        raise ProbeError(f"--sigma must be a positive fraction of the median distance, got {sigma}")
    if rsa_corr not in RSA_CORR:
        raise ProbeError(f"unknown --rsa-corr {rsa_corr!r}: use one of {', '.join(RSA_CORR)}")
    if rdm not in RDMS:
        raise ProbeError(f"unknown --rdm {rdm!r}: use one of {', '.join(RDMS)}")
    return Options(metric, int(k), float(sigma), rsa_corr, rdm, resolve_device(device),
                   bool(bootstrap))


def check_draws(permutations: int, bootstrap: int, ci: float) -> None:
    _count("--permutations", permutations)
    _count("--bootstrap", bootstrap)
    if isinstance(ci, bool) or not (isinstance(ci, (int, float)) and 0 < ci < 1):
        raise ProbeError(f"--ci is the interval's coverage, between 0 and 1 (e.g. 0.95), got {ci!r}")


def smallest(opts: Options) -> int:
    """The fewest samples the measure is defined on."""
    if opts.metric in ("cka-unbiased", "cknna"):
        return max(4, opts.k + 1)
    return {"mutual-knn": opts.k + 1, "rsa": 3}.get(opts.metric, 2)


def square_bytes(n: int) -> int:
    return n * n * 8


def needs_square(opts: Options, n: int, sizes: Sequence[int]) -> bool:
    """Whether the measure builds n x n matrices for keys of these feature sizes."""
    family = FAMILIES[opts.metric]
    return not all(family.needs_features(opts, n, d) for d in sizes)


def pick_samples(n: int, sizes: Sequence[int], opts: Options, subsample: int | None,
                 max_samples: int, seed: int) -> np.ndarray | None:
    """The sample rows used (None: all n), after the size checks: too few samples, or more
    than ``max_samples`` for a measure of n x n matrices without ``subsample``."""
    if subsample is not None:
        _count("--subsample", subsample, smallest(opts))
        if subsample > n:
            raise ProbeError(f"--subsample {subsample} is more than the {n} samples there are")
    used = n if subsample is None else subsample
    if used < smallest(opts):
        what = f"k={opts.k} neighbours" if opts.metric in ("mutual-knn", "cknna") else opts.metric
        raise ProbeError(f"{what} needs at least {smallest(opts)} samples, got {used}")
    _count("--max-samples", max_samples, 1)
    if used > max_samples and needs_square(opts, used, sizes):
        raise ProbeError(
            f"{opts.metric} on {used} samples needs {used} x {used} float64 matrices of "
            f"{square_bytes(used) / 2**30:.1f} GiB each, over --max-samples {max_samples}: pass "
            f"--subsample {max_samples} (a seeded random subset) or a larger --max-samples")
    if subsample is None or subsample == n:
        return None
    return np.sort(np.random.default_rng([seed, 0]).choice(n, subsample, replace=False))


def draws(n: int, permutations: int, bootstrap: int, seed: int, device: torch.device
          ) -> tuple[torch.Tensor | None, ...]:
    """The permutations (P, n) and bootstrap resamples (B, n) every pair uses."""
    g = np.random.default_rng([seed, 1])
    perms = np.stack([g.permutation(n) for _ in range(permutations)]) if permutations else None
    boots = np.random.default_rng([seed, 2]).integers(0, n, (bootstrap, n)) if bootstrap else None
    return tuple(None if d is None else torch.as_tensor(d, device=device) for d in (perms, boots))


class Sides:
    """Prepared keys, each made once while the cache has room."""

    def __init__(self, opts):
        self.opts, self.used = opts, 0
        self.cache: dict[tuple[Any, ...], Any] = {}
        self.constant: set[tuple[Any, Any]] = set()

    def get(self, src: Any, pos: int, rows: np.ndarray | None) -> Any:
        name = (src.name, src.keys[pos], rows is None)
        if name in self.cache:
            return self.cache[name]
        family = FAMILIES[self.opts.metric]
        n = len(src) if rows is None else len(rows)
        rows_ = np.arange(n) if rows is None else rows
        raw = read(src, pos, rows_, self.opts.device,
                   family.needs_features(self.opts, n, dims(src, pos)))
        side = family.prepare(raw, self.opts)
        if side.constant:
            self.constant.add((src.name, src.keys[pos]))
        size = sum(t.numel() * t.element_size() for t in vars(side).values() if torch.is_tensor(t))
        if self.used + size <= CACHE_BYTES:
            self.cache[name], self.used = side, self.used + size
        return side


def _null(family, a, b, opts, perms, observed):
    """Mean of the permutation null and the p-value (1 + #(null at least as extreme)) / (1 + P)."""
    n = len(perms[0])
    step = max(1, CHUNK_BYTES // square_bytes(n))
    null = np.concatenate([family.score(a, b, opts, perms[i:i + step])
                           for i in range(0, len(perms), step)])
    extreme = null <= observed if opts.metric in DISTANCES else null >= observed
    return null.mean(), (1 + extreme.sum()) / (1 + len(null))


def run(src_a: Any, src_b: Any, rows_a: np.ndarray | None, rows_b: np.ndarray | None,
        opts: Options, permutations: int = 0, bootstrap: int = 0, ci: float = 0.95, seed: int = 0,
        progress: bool = False) -> dict[str, Any]:
    """Every pair of ``src_a``'s keys (rows) with ``src_b``'s (columns), on sample rows
    ``rows_a`` of a and ``rows_b`` of b (None: all, in file order).  Returns a dict of
    (rows x cols) matrices: value, and null_mean, p_value, ci_low, ci_high when asked for,
    with the (file, key) pairs whose features never vary under ``constant``."""
    family = FAMILIES[opts.metric]
    n = len(src_a) if rows_a is None else len(rows_a)
    perms, boots = draws(n, permutations, bootstrap, seed, opts.device)
    shape = (len(src_a.keys), len(src_b.keys))
    out: dict[str, Any] = {"value": np.zeros(shape)}
    if perms is not None:
        out.update(null_mean=np.zeros(shape), p_value=np.zeros(shape))
    if boots is not None:
        out.update(ci_low=np.zeros(shape), ci_high=np.zeros(shape))
    sides = Sides(opts)
    bar = tqdm(total=shape[0] * shape[1], desc=opts.metric, unit="pair", disable=not progress)
    with torch.no_grad(), bar:
        for i in range(shape[0]):
            a = sides.get(src_a, i, rows_a)
            for j in range(shape[1]):
                b = sides.get(src_b, j, rows_b)
                out["value"][i, j] = family.score(a, b, opts)[0]
                if perms is not None:
                    out["null_mean"][i, j], out["p_value"][i, j] = _null(
                        family, a, b, opts, perms, out["value"][i, j])
                if boots is not None:
                    vals = [family.resample(a, b, opts, idx) for idx in boots]
                    out["ci_low"][i, j], out["ci_high"][i, j] = _interval(
                        vals, out["value"][i, j], ci, opts.metric)
                bar.update()
    out["constant"] = sides.constant
    return out


def _interval(vals, value, ci, metric):
    """The bootstrap interval of ``value`` from the resampled values (see
    SHIFTED_BY_RESAMPLING for which measures get the basic interval)."""
    tail = (1 - ci) / 2
    lo, hi = np.quantile(vals, [tail, 1 - tail])
    if metric in SHIFTED_BY_RESAMPLING:
        shift = np.mean(vals) - value
        return lo - shift, hi - shift
    return lo, hi
