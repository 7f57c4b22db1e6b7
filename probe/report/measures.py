"""Drawing the measures' results: heatmaps and line plots of a
:class:`~probe.measures.result.SimilarityResult` of any measure (CKA, mutual kNN, RSA, ...)."""
from __future__ import annotations

import math
import os
import textwrap
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import ProbeError
from ..measures.result import t_label
from .figures import log_snr_axis, new_figure, save_figure, t_axis

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..measures.result import SimilarityResult

CMAP = "viridis"
MAX_LINES = 8  # more lines than this are unreadable: pick evenly spaced blocks


def _name(path: str | None) -> str:
    return os.path.splitext(os.path.basename(path))[0] if path else ""


def _settings(result: SimilarityResult) -> tuple[str, str]:
    """The measure's settings, in words."""
    e, m = result.estimator, result.metric
    if m.startswith("cka"):
        kind = "linear" if e.get("kernel") == "linear" else f"RBF (sigma={e.get('sigma')} x median)"
        est = "unbiased" if e.get("unbiased") else "biased"
        batch = f", minibatch {e['minibatch']}" if e.get("batches", 1) > 1 else ""
        return f"{kind}, {est} HSIC", batch
    words = {"mutual-knn": f"k={e.get('k')}", "cknna": f"k={e.get('k')}",
             "rsa": f"{e.get('rsa_corr')} of {e.get('rdm')} RDMs", "svcca": "99% of variance"}
    return words.get(m, ""), ""


def _title(result: SimilarityResult) -> str:
    files = (f"{_name(result.files[0])} vs {_name(result.files[1])}" if result.two_files
             else _name(result.files[0]))
    what, batch = _settings(result)
    name = "CKA" if result.metric.startswith("cka") else result.label
    return f"{name} {files}: {what + ', ' if what else ''}{result.num_samples} samples{batch}"


def _colours(result: SimilarityResult, m: np.ndarray,
             minus_null: bool) -> tuple[str, float, float, Callable[[float], bool]]:
    """Colour map, its range, and whether a cell of value v wants white text.  Distances
    run the map the other way, so that similar looks alike in every measure; a difference
    from the null is centred on 0."""
    if minus_null:
        lim = max(float(np.abs(m).max()), 1e-12)
        return ("RdBu" if result.distance else "RdBu_r"), -lim, lim, lambda v: abs(v) / lim > 0.6
    if result.distance:
        vmax = max(float(m.max()), 1e-12)
        return CMAP + "_r", 0.0, vmax, lambda v: v / vmax > 0.4  # viridis_r is dark at the top
    vmin, vmax = min(0.0, float(m.min())), max(1.0, float(m.max()))
    return CMAP, vmin, vmax, lambda v: (v - vmin) / (vmax - vmin) < 0.6  # dark at the low end


def _bar_label(result: SimilarityResult, minus_null: bool) -> str:
    if minus_null:
        return f"{result.metric} - null mean"
    return f"{result.label} (0 = same)" if result.distance else result.label


def heatmaps(result: SimilarityResult, path: str | os.PathLike, across: str | None = None,
             annotate: bool | None = None, dpi: int = 150, minus_null: bool = False) -> str:
    """One heatmap per panel of ``result.panels(across)`` with a shared colour bar; rows top
    to bottom and columns left to right in forward order.  ``annotate``: write values in
    the cells (default when panels are at most 10 x 10).  ``minus_null``: draw each value
    minus the mean of its permutation null (the result needs one)."""
    across = across or result.across
    panels = result.panels(across)
    ncols = min(len(panels), math.ceil(math.sqrt(len(panels))))
    nrows = math.ceil(len(panels) / ncols)
    n_r = max(len(p.rows) for p in panels)
    n_c = max(len(p.cols) for p in panels)
    grouped = across == "all"  # blocks on the ticks, timesteps labelled per group
    longest = max(len(s) for p in panels for s in p.row_labels + p.col_labels)
    if grouped:
        longest = max(len(b) for _, b in result.rows + result.cols)
    cell = max(0.11, min(0.42, 12.0 / max(n_r, n_c)))  # inches; big grids stay on a page
    fontsize = max(5, min(8, int(cell * 54)))
    margin = 0.6 + 0.075 * longest * fontsize / 8  # room for tick labels
    fig = new_figure(ncols * (n_c * cell + margin) + 1.4, nrows * (n_r * cell + margin) + 1.0,
                     layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    m = result.matrix
    if minus_null:
        if result.null_mean is None:
            raise ProbeError("drawing the value minus the null needs a permutation null: "
                             "add --permutations P")
        m = m - result.null_mean
    cmap, vmin, vmax, white = _colours(result, m, minus_null)
    if annotate is None:
        annotate = n_r <= 10 and n_c <= 10
    name_a, name_b = _name(result.files[0]), _name(result.files[1] or result.files[0])
    what = {"blocks": "block", "timesteps": "timestep", "logsnr": "log-SNR",
            "all": "block, grouped by t"}[across]
    for ax, p in zip(axes, panels):
        sub = m[np.ix_(p.rows, p.cols)]
        im = ax.imshow(sub, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        row_keys, col_keys = [result.rows[i] for i in p.rows], [result.cols[j] for j in p.cols]
        if grouped:  # the t of each group is written on the opposite side
            xlab, ylab = [b for _, b in col_keys], [b for _, b in row_keys]
        else:
            xlab, ylab = p.col_labels, p.row_labels
        ax.set_xticks(range(len(p.cols)), xlab, rotation=45, ha="right", rotation_mode="anchor",
                      fontsize=fontsize)
        ax.set_yticks(range(len(p.rows)), ylab, fontsize=fontsize)
        col_ts = {k[0] for k in col_keys}
        at = (f" at t={col_ts.pop()}" if across == "blocks" and len(col_ts) == 1
              and None not in col_ts else "")
        # a network without timesteps has blocks only, whatever the other side is grouped by
        what_c = "block" if all(k[0] is None for k in col_keys) else what
        what_r = "block" if all(k[0] is None for k in row_keys) else what
        ax.set_xlabel(f"{name_b}: {what_c}{at}" if result.two_files else what_c)
        ax.set_ylabel(f"{name_a}: {what_r}" if result.two_files else what_r)
        if len(panels) > 1:
            ax.set_title(p.title, fontsize=10)
        if grouped:
            _group_timesteps(ax, [k[0] for k in row_keys], "y", fontsize)
            _group_timesteps(ax, [k[0] for k in col_keys], "x", fontsize)
        if annotate:
            for (i, j), v in np.ndenumerate(sub):
                ax.text(j, i, f"{v:.2f}".replace("-0.00", "0.00"), ha="center", va="center",
                        fontsize=max(5, fontsize - 1), color="white" if white(v) else "black")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes[:len(panels)].tolist(), label=_bar_label(result, minus_null), shrink=0.9)
    # wrapped to the figure's width (about 14 characters per inch at 10 pt), so a narrow
    # grid (one reference network's few blocks) does not clip it
    fig.suptitle(textwrap.fill(_title(result), max(30, int(fig.get_figwidth() * 14))),
                 fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def _group_timesteps(ax: Axes, ts: Sequence[Any], axis: str, fontsize: int) -> None:
    """White lines between runs of one timestep and a 't=T' label over each run, on the
    opposite side of the block names."""
    starts = [0] + [i for i in range(1, len(ts)) if ts[i] != ts[i - 1]]
    for i in starts[1:]:
        (ax.axhline if axis == "y" else ax.axvline)(i - 0.5, color="white", lw=1.2)
    if len(starts) < 2 and len(ts) < 2:
        return
    ends = starts[1:] + [len(ts)]
    centres = [(a + b - 1) / 2 for a, b in zip(starts, ends)]
    names = [t_label(ts[a]) for a in starts]
    if axis == "x":
        sec = ax.secondary_xaxis("top")
        sec.set_xticks(centres, names, fontsize=fontsize + 1)
    else:
        sec = ax.secondary_yaxis("right")
        sec.set_yticks(centres, names, fontsize=fontsize + 1, rotation=90, va="center")
    sec.tick_params(length=0)


def default_line_blocks(result: SimilarityResult) -> list[str]:
    blocks = list(dict.fromkeys(b for _, b in result.rows))
    if len(blocks) <= MAX_LINES:
        return blocks
    pick = np.unique(np.linspace(0, len(blocks) - 1, MAX_LINES).round().astype(int))
    return [blocks[i] for i in pick]


def line_plot(result: SimilarityResult, path: str | os.PathLike, blocks: Sequence[str] | None = None,
              ref: str | None = None, dpi: int = 150) -> str:
    """The measure against t (against log-SNR for ``across="logsnr"``), one line per block
    (see :meth:`SimilarityResult.line` for ``ref``)."""
    lines, ref_text = result.line(blocks or default_line_blocks(result), ref)
    fig = new_figure(6.4, 4.2, layout="constrained")
    ax = fig.subplots()
    on_log_snr = result.across == "logsnr"  # the rows' t placed at their log-SNR
    if on_log_snr:
        lines = {b: ([result.log_snr((t, b)) for t in ts], vals) for b, (ts, vals) in lines.items()}
    ts_all = sorted({t for ts, _ in lines.values() for t in ts})
    low, high = 0.0, 1.0
    for block, (ts, vals) in lines.items():
        pts = sorted(zip(ts, vals))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=block)
        low, high = min(low, min(vals)), max(high, max(vals))
    if on_log_snr:
        log_snr_axis(ax, ts_all)
    elif len(ts_all) <= 12:
        t_axis(ax, ts_all)
    else:
        ax.set_xlabel("timestep t")
    ax.set_ylabel(_bar_label(result, False))
    ax.set_ylim(low - 0.02, high + 0.02)  # a distance can reach 2
    ax.grid(alpha=0.3)
    ax.set_title(f"{result.label} with {ref_text}", fontsize=10)
    ax.legend(title="block", fontsize=8, loc="best")
    fig.suptitle(_title(result), fontsize=9)
    return save_figure(fig, path, dpi=dpi)
