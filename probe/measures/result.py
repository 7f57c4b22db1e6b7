"""What `probe.cka` and `probe.measures.similarity` return: the matrix, its labels, the
panels to draw, the permutation null and bootstrap interval when asked for, and files."""
import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ProbeError, suggest
from ..files import atomic_json, atomic_write
from ..selection import Key, parse_key
from ..store import key_name

ACROSS = ("blocks", "timesteps", "logsnr", "all")
# the measures of `probe similarity`, as written in plots and messages
LABELS = {"cka": "CKA", "cka-unbiased": "unbiased CKA", "cka-rbf": "RBF CKA",
          "mutual-knn": "mutual k-NN", "cknna": "CKNNA", "rsa": "RSA",
          "procrustes": "Procrustes distance", "svcca": "SVCCA"}
METRICS = tuple(LABELS)
DISTANCES = ("procrustes",)  # lower is more similar
# Estimators that change with the number of distinct samples: a bootstrap resample (about
# 63 % distinct) shifts them, often by more than their spread, so their percentile interval
# misses the value.  They get the percentile interval moved back by the bootstrap estimate
# of that shift (mean of the resamples minus the value; Efron & Tibshirani 1993, ch. 10).
SHIFTED_BY_RESAMPLING = ("cka", "cka-rbf", "procrustes", "svcca")


def interval_method(metric: str) -> str:
    return "bias-corrected percentile" if metric in SHIFTED_BY_RESAMPLING else "percentile"
# what the uncertainty matrices are called in the JSON and the stats CSV
STATS = ("null_mean", "p_value", "ci_low", "ci_high")


@dataclass
class Panel:
    """One heatmap: a sub-matrix (row and column indices into the full one) and names."""

    title: str
    rows: list
    cols: list
    row_labels: list
    col_labels: list


@dataclass
class SimilarityResult:
    """A measure (CKA by default) between every row key (file A) and every column key
    (file B, or A again).

    ``matrix[i, j]`` is the measure of ``rows[i]`` and ``cols[j]``, keys being (t, block)
    in forward order (t ascending, blocks in the model's order).  ``across`` only decides
    how the matrix is cut into heatmap panels; the matrix always holds every pair.
    ``metric`` names the measure (``distance``: lower is more similar).  With a
    permutation null, ``null_mean`` and ``p_value`` have the matrix's shape; with a
    bootstrap, ``ci_low`` and ``ci_high`` (the ``uncertainty`` dict says how they were made).
    """

    matrix: np.ndarray
    rows: list
    cols: list
    across: str = "blocks"
    files: tuple = (None, None)
    num_samples: int = 0
    estimator: dict = field(default_factory=dict)
    constant_keys: list = field(default_factory=list)
    metric: str = "cka"
    null_mean: np.ndarray | None = None
    p_value: np.ndarray | None = None
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    uncertainty: dict = field(default_factory=dict)
    # t -> log-SNR of the row file and of the column file, as they record it
    levels: tuple = ({}, {})

    @property
    def label(self) -> str:
        return LABELS.get(self.metric, self.metric)

    @property
    def distance(self) -> bool:
        return self.metric in DISTANCES

    @property
    def has_stats(self) -> bool:
        return any(getattr(self, s) is not None for s in STATS)

    @property
    def row_labels(self) -> list[str]:
        return [key_name(*k) for k in self.rows]

    @property
    def col_labels(self) -> list[str]:
        return [key_name(*k) for k in self.cols]

    @property
    def two_files(self) -> bool:
        return self.files[1] is not None

    def __repr__(self):
        m = self.matrix
        what = "CKAResult(" if self.metric == "cka" else f"SimilarityResult({self.metric}, "
        return (f"{what}{m.shape[0]}x{m.shape[1]} over {self.num_samples} samples, "
                f"across={self.across}, min={m.min():.3f}, max={m.max():.3f})")

    def value(self, row: str | Key, col: str | Key) -> float:
        """The measure of one row key and one column key ('t100/block' or (100, 'block'))."""
        row, col = parse_key(row), parse_key(col)
        for k, keys, side in ((row, self.rows, "row"), (col, self.cols, "column")):
            if k not in keys:
                raise ProbeError(f"{key_name(*k)} is not a {side} of this {self.label} result"
                                 f"{suggest(key_name(*k), [key_name(*x) for x in keys])}")
        return float(self.matrix[self.rows.index(row), self.cols.index(col)])

    # -- panels and lines ---------------------------------------------------------------
    def panels(self, across: str | None = None) -> list[Panel]:
        """The heatmaps to draw: one per t (across blocks), one per block (across
        timesteps), or one of everything (all).  Columns from a second file that has a
        single timestep (or block) go with every panel."""
        across = across or self.across
        if across not in ACROSS:
            raise ProbeError(f"unknown across {across!r}: use one of {', '.join(ACROSS)}")
        if across == "logsnr":
            return self._log_snr_panels()
        if across == "all":
            return [Panel("all keys", list(range(len(self.rows))), list(range(len(self.cols))),
                          self.row_labels, self.col_labels)]
        part = 0 if across == "blocks" else 1  # what a panel holds fixed
        show = (lambda k: k[1]) if across == "blocks" else (lambda k: t_label(k[0]))
        col_groups = list(dict.fromkeys(k[part] for k in self.cols))
        row_groups = list(dict.fromkeys(k[part] for k in self.rows))
        out = []
        # a network without timesteps on the rows goes with every t of the columns
        by_cols = across == "blocks" and row_groups == [None] and len(col_groups) > 1
        for g in col_groups if by_cols else row_groups:
            r = [i for i, k in enumerate(self.rows) if k[part] == g or by_cols]
            c = [j for j, k in enumerate(self.cols) if k[part] == g or len(col_groups) == 1]
            if not c:
                continue
            title = t_label(g, " = ") if across == "blocks" else str(g)
            out.append(Panel(title, r, c, [show(self.rows[i]) for i in r], [show(self.cols[j]) for j in c]))
        if not out:
            what = "timesteps" if across == "blocks" else "blocks"
            raise ProbeError(f"the two files share no {what}, so there is nothing to draw across "
                             f"{across}: use --across all")
        return out

    def log_snr(self, key: tuple, side: int = 0) -> float:
        """The log-SNR of a row key (``side`` 0) or a column key (1), from its file."""
        levels = self.levels[side] or {}
        if key[0] not in levels:
            raise ProbeError(f"{self.files[side] or self.files[0]} records no log-SNR for "
                             f"t={key[0]} (written by an older probe, or a network without "
                             "timesteps): re-extract it, or use --across blocks or timesteps")
        return levels[key[0]]

    def _log_snr_panels(self) -> list[Panel]:
        """One panel per (row block, column block), both sides ordered by log-SNR (noisiest
        first), so that files of different families share the axis."""
        out = []
        for rb in dict.fromkeys(b for _, b in self.rows):
            for cb in dict.fromkeys(b for _, b in self.cols):
                r = sorted((i for i, k in enumerate(self.rows) if k[1] == rb),
                           key=lambda i: self.log_snr(self.rows[i], 0))
                c = sorted((j for j, k in enumerate(self.cols) if k[1] == cb),
                           key=lambda j: self.log_snr(self.cols[j], 1))
                out.append(Panel(f"{rb} vs {cb}", r, c,
                                 [f"{self.log_snr(self.rows[i], 0):.2f}" for i in r],
                                 [f"{self.log_snr(self.cols[j], 1):.2f}" for j in c]))
        return out

    def line(self, blocks: str | Sequence[str] | None = None, ref: str | None = None
             ) -> tuple[dict[str, tuple[list[Any], list[float]]], str]:
        """The measure against t for some blocks: {block: (timesteps, values)} and a
        description of what each (t, block) is compared with.

        ``ref``: 'logsnr' -- the column of nearest log-SNR (default with ``across``
        'logsnr'); 'tT' -- the same block at timestep T (default: the smallest t, or in two
        files 'same' when the second file has the same keys); 'same' -- the same (t, block)
        in the second file; 'tT/BLOCK' -- one fixed column key."""
        if all(t is None for t, _ in self.rows):
            raise ProbeError(f"{self.files[0]} has no timesteps (a network that sees the clean "
                             "image), so there is no line against t: swap the two files")
        col_ts = sorted({t for t, _ in self.cols})
        if ref is None and self.across == "logsnr":
            ref = "logsnr"
        if ref is None:
            same = self.two_files and all(k in self.cols for k in self.rows)
            ref = "same" if same else (key_name(*self.cols[-1]) if self.two_files else f"t{col_ts[0]}")
        if ref == "same" and not self.two_files:
            raise ProbeError("line reference 'same' compares with a second file; give one, or use tT")
        if blocks is None:
            blocks = list(dict.fromkeys(b for _, b in self.rows))
        elif isinstance(blocks, str):
            blocks = [b for b in blocks.split(",") if b]
        known = list(dict.fromkeys(b for _, b in self.rows))
        lines: dict[str, tuple[list[Any], list[float]]] = {}
        for b in blocks:
            if b not in known:
                raise ProbeError(f"block {b!r} is not in the {self.label} rows{suggest(b, known)}")
            ts, vals = [], []
            for (t, bb) in self.rows:
                if bb != b:
                    continue
                col = self._nearest_col(t, b) if ref == "logsnr" else self._ref_key(ref, t, b)
                if col not in self.cols:
                    raise ProbeError(f"the line for {b} needs {key_name(*col)}, which is not among "
                                     f"the {self.label} columns: include it in --keys or change "
                                     "--line-ref")
                ts.append(t)
                vals.append(self.value((t, b), col))
            lines[b] = (ts, vals)
        return lines, self._ref_text(ref)

    def _nearest_col(self, t: int | float, block: str) -> tuple:
        """The column of log-SNR nearest the row (t, block)'s: of the same block when the
        columns have it, else of the first column block."""
        blocks = [b for _, b in self.cols]
        same = block if block in blocks else blocks[0]
        level = self.log_snr((t, block), 0)
        return min((k for k in self.cols if k[1] == same),
                   key=lambda k: abs(self.log_snr(k, 1) - level))

    @staticmethod
    def _ref_key(ref, t, block):
        if ref == "same":
            return (t, block)
        if re_t(ref):
            return (int(ref[1:]), block)
        return parse_key(ref)

    def _ref_text(self, ref):
        if ref == "logsnr":
            return "the column of nearest log-SNR"
        if ref == "same":
            return "the same t and block in the second file"
        if re_t(ref):
            return f"the same block at t={ref[1:]}"
        return key_name(*parse_key(ref))

    # -- files --------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike) -> str | os.PathLike:
        """The matrix with its labels: first row the column keys, first column the row keys;
        values written exactly (shortest round-trip decimal)."""
        with atomic_write(path, newline="") as f:
            w = csv.writer(f)
            w.writerow(["row \\ col"] + self.col_labels)
            for lab, row in zip(self.row_labels, self.matrix):
                w.writerow([lab] + [repr(float(v)) for v in row])
        return path

    def to_stats_csv(self, path: str | os.PathLike) -> str | os.PathLike:
        """One line per (row, column) pair: the value, then the permutation null's mean and
        p-value and the bootstrap interval, those that were computed."""
        stats = [s for s in STATS if getattr(self, s) is not None]
        with atomic_write(path, newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "col", "value"] + stats)
            for (i, r), (j, c) in ((a, b) for a in enumerate(self.row_labels)
                                   for b in enumerate(self.col_labels)):
                w.writerow([r, c, repr(float(self.matrix[i, j]))]
                           + [repr(float(getattr(self, s)[i, j])) for s in stats])
        return path

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric, "distance": self.distance,
               "rows": self.row_labels, "cols": self.col_labels,
               "matrix": self.matrix.tolist(), "across": self.across,
               "files": {"rows": self.files[0], "cols": self.files[1] or self.files[0]},
               "num_samples": self.num_samples, "estimator": self.estimator,
               "constant_keys": self.constant_keys}
        if any(self.levels):
            out["logsnr"] = {"rows": [self.levels[0].get(t) for t, _ in self.rows],
                             "cols": [(self.levels[1] or self.levels[0]).get(t)
                                      for t, _ in self.cols]}
        if self.has_stats:
            out["uncertainty"] = self.uncertainty
            out.update({s: getattr(self, s).tolist() for s in STATS if getattr(self, s) is not None})
        return out

    def to_json(self, path: str | os.PathLike) -> str | os.PathLike:
        atomic_json(self.to_dict(), path)
        return path


CKAResult = SimilarityResult  # its name before the other measures came


def t_label(t: float | None, sep: str = "=") -> str:
    """'t=T' for a timestep; for a network without timesteps, what it sees instead."""
    return "clean image (no t)" if t is None else f"t{sep}{t}"


def re_t(s: object) -> bool:
    return isinstance(s, str) and len(s) > 1 and s[0] == "t" and s[1:].isdigit()
