"""Drawing the heads' results: the tables and figures of `probe compare` (results.md,
accuracy_vs_t.png, heads.png) and the fusion head's key weights.

Rows are the dicts of :func:`probe.heads.compare.compare` (``t``, ``block``, ``head``,
``top1``, ``num_eval``, ``params``, ...; a fusion row has ``keys`` instead of a key).
"""
from __future__ import annotations

import csv
import os
from typing import Any, Mapping, Sequence

from ..files import atomic_json, atomic_write
from ..selection import key_label
from .figures import new_figure, save_figure, t_axis
from .pages import INTERVAL_NOTE, accuracy, error_bars, pct, ties, write_markdown

Row = Mapping[str, Any]
FUSION_PLOT = "fusion_weights.png"
OUTPUTS = ("results.csv", "results.md", "results.json", "accuracy_vs_t.png", "heads.png")


def _split(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """(fusion rows, single-key rows)."""
    return [r for r in rows if r.get("keys")], [r for r in rows if not r.get("keys")]


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def write_compare(out: str | os.PathLike, rows: Sequence[Row], columns: Sequence[str],
                  summaries: Sequence[Mapping[str, Any]], context: Mapping[str, Any]) -> list[str]:
    """Everything `probe compare` writes to the folder ``out``: results.csv (``columns``),
    results.json (``summaries`` without their predictions), results.md (see
    :func:`markdown_table` for ``context``), the two figures and, for a fusion head, its
    key weights.  Returns the paths written."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f) for f in OUTPUTS]
    with atomic_write(paths[0], newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    atomic_json([{k: v for k, v in s.items() if k != "predictions"} for s in summaries], paths[2])
    write_markdown(paths[1], markdown_table(rows, context))
    plot_accuracy_vs_t(rows, paths[3])
    plot_heads(rows, paths[4])
    for s in summaries:
        if s.get("key_weights"):
            paths.append(plot_key_weights(s, os.path.join(out, FUSION_PLOT)))
    return paths


def _fusion_lines(fused: Sequence[Row]) -> list[str]:
    lines = []
    for r in fused:
        n = len(r["keys"].split(" + "))
        lines += ["", f"Fusion head: one head on all {n} keys, mixed with learned weights "
                      f"(weights in results.json and {FUSION_PLOT}): top-1 "
                      f"{accuracy(r['top1'], r.get('num_eval'))} ({_count(r['params'])} parameters)."]
    return lines


def _best_lines(rows: Sequence[Row], heads: Sequence[str]) -> list[str]:
    """Per head, its best key and the keys tied with it."""
    lines = []
    for h in heads:
        tied = ties([r for r in rows if r["head"] == h])
        best = tied[0]
        how = (f"trained on {best['keys_in_pass']} keys in one pass of {best['train_time_s']:.1f} s"
               if best["epochs_run"] is not None else f"fit in {best['train_time_s']:.1f} s")
        also = ("; tied within the intervals: " + ", ".join(
            f"{key_label((r['t'], r['block']))} ({pct(r['top1'])})" for r in tied[1:])
            if len(tied) > 1 else "")
        lines.append(f"- {h}: {accuracy(best['top1'], best.get('num_eval'))} at "
                     f"{key_label((best['t'], best['block']))} ({how}){also}")
    return lines


def markdown_table(rows: Sequence[Row], context: Mapping[str, Any]) -> str:
    """The results.md of `probe compare`: a table of top-1 (with its 95 % interval) per key
    and head, each head's best key and its ties, the fusion heads, the notes.
    ``context``: ``train`` and ``test`` (paths, test None), ``num_train``, ``num_val`` and
    ``notes``."""
    fused, rows = _split(rows)
    heads = list(dict.fromkeys(r["head"] for r in rows))
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    keys = sorted(dict.fromkeys((r["t"], r["block"]) for r in rows),
                  key=lambda k: (blocks.index(k[1]), k[0]))
    cell = {(r["t"], r["block"], r["head"]): r for r in rows}
    where = (f"test file `{context['test']}`" if context["test"] is not None
             else f"the validation split ({context['num_val']} samples of the train file)")
    lines = [f"Top-1 accuracy (%) on {where}, training on `{context['train']}` "
             f"({context['num_train']} samples), with its 95 % interval; parameter counts in "
             "brackets.", ""]
    lines.append("| block | t | " + " | ".join(heads) + " |")
    lines.append("|---|---|" + "---|" * len(heads))
    for t, b in keys:
        cells = [f"{accuracy(c['top1'], c.get('num_eval'))} ({_count(c['params'])})"
                 if (c := cell.get((t, b, h))) else "-" for h in heads]
        lines.append(f"| {b} | {'-' if t is None else t} | " + " | ".join(cells) + " |")
    lines += ["", "Best (t, block) per head:", ""] + _best_lines(rows, heads)
    lines += _fusion_lines(fused)
    notes = dict.fromkeys(context.get("notes", ()))
    if any("global-average-pooled" in r["input"] for r in rows):
        notes["linear/mlp/logreg/knn on spatial maps use the global-average-pooled map"] = None
    lines += ["", INTERVAL_NOTE] + [""] + [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def _error_bar(ax: Any, x: Any, rows: Sequence[Row], **style: Any) -> None:
    """Each row's top-1 (in %) at ``x`` with its 95 % interval as an error bar."""
    err = error_bars([r["top1"] for r in rows], [r.get("num_eval") for r in rows])
    ax.errorbar(x, [100 * r["top1"] for r in rows], yerr=err, capsize=2, **style)


def plot_accuracy_vs_t(rows: Sequence[Row], path: str | os.PathLike) -> str:
    """One panel per block: top-1 against t with its 95 % interval, one line per head (the
    fusion head, which reads every key, as a dashed level)."""
    fused, rows = _split(rows)
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    heads = list(dict.fromkeys(r["head"] for r in rows))
    cols = min(4, len(blocks))
    nrows = -(-len(blocks) // cols)
    fig = new_figure(3.6 * cols, 2.9 * nrows, layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True)
    for ax, b in zip(axes.flat, blocks):
        for h in heads:
            colour = f"C{heads.index(h)}"
            timed = sorted((r for r in rows if r["block"] == b and r["head"] == h
                            and r["t"] is not None), key=lambda r: r["t"])
            if timed:
                _error_bar(ax, [r["t"] for r in timed], timed, marker="o", label=h, color=colour)
                t_axis(ax, [r["t"] for r in timed], label="t")
            for r in rows:  # a network without timesteps: one level for all t
                if r["t"] is None and r["block"] == b and r["head"] == h:
                    ax.axhline(100 * r["top1"], ls=":", color=colour, label=f"{h} (no t)")
        for r in fused:
            ax.axhline(100 * r["top1"], ls="--", color="gray", label="fusion (all keys)")
        ax.set_title(b, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 (%), 95 % interval")
    for ax in list(axes.flat)[len(blocks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Accuracy against timestep, per block")
    return save_figure(fig, path)


def plot_heads(rows: Sequence[Row], path: str | os.PathLike) -> str:
    """Heads side by side: per block, each head's best top-1 over t (labelled with that t)
    with its 95 % interval; the fusion head, on all keys, as a dashed level."""
    import numpy as np

    fused, rows = _split(rows)
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    heads = list(dict.fromkeys(r["head"] for r in rows))
    width = 0.8 / len(heads)
    fig = new_figure(max(5.0, 1.1 * len(blocks) * max(1, len(heads) / 2)), 3.8)
    ax = fig.subplots()
    x = np.arange(len(blocks))
    for i, h in enumerate(heads):
        best = [max((r for r in rows if r["block"] == b and r["head"] == h),
                    key=lambda r: r["top1"]) for b in blocks]
        xs = x + (i - (len(heads) - 1) / 2) * width
        bars = ax.bar(xs, [100 * r["top1"] for r in best], width, label=h)
        _error_bar(ax, xs, best, fmt="none", ecolor="black", elinewidth=0.8)
        for bar, r in zip(bars, best):
            ax.annotate("" if r["t"] is None else f"t{r['t']}",  # no t: nothing to label
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=6)
    for r in fused:
        ax.axhline(100 * r["top1"], ls="--", color="gray", label="fusion (all keys)")
    tilt = len(blocks) > 4
    ax.set_xticks(x, blocks, rotation=30 if tilt else 0, ha="right" if tilt else "center",
                  fontsize=8)
    ax.set_ylabel("best top-1 over t (%)")
    ax.set_title("Heads side by side (label: the best t; bars: 95 % interval)")
    lo = min(100 * r["top1"] for r in list(rows) + fused)
    ax.set_ylim(max(0, lo - 10), 104)
    ax.set_yticks([v for v in ax.get_yticks() if v <= 100])
    ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center",
               ncol=len(heads) + len(fused), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, path)


def plot_key_weights(summary: Mapping[str, Any], path: str | os.PathLike) -> str:
    """A bar chart of the fusion head's learned weight of each key."""
    labels, weights = zip(*summary["key_weights"].items())
    fig = new_figure(max(4.0, 0.55 * len(labels) + 1.5), 3.6, layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(labels)), weights, color="tab:blue")
    ax.axhline(1 / len(labels), color="gray", ls="--", lw=1, label="uniform")
    tilt = len(labels) > 3
    ax.set_xticks(range(len(labels)), labels, rotation=40 if tilt else 0,
                  ha="right" if tilt else "center", fontsize=8)
    ax.set_ylabel("learned weight")
    head = summary["head_options"].get("fusion_head", "linear")
    on = "test" if summary["evaluated_on"] == "test" else "validation"
    ax.set_title(f"fusion ({head}) of {len(labels)} keys: {on} top-1 "
                 f"{accuracy(summary['top1'], summary.get('num_eval'), ' %')}", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
