"""`probe compare`: a grid of heads over (t, block) keys, as a CSV, a markdown table and
plots.  Each neural head trains on every key in one pass over the data (sharing every
batch); baselines fit per key; the fusion head is one head on all the keys."""
import csv
import os

from ..errors import ProbeError
from .build import ALL_HEADS, check_head
from ..files import atomic_json, atomic_write
from ..selection import key_label
from ..store import opened
from .fit import split_options, train_heads
from .fusion import fusion_views, plot_key_weights
from .setup import Setup

COLUMNS = ["t", "block", "head", "params", "top1", "top5", "val_top1", "selected_epoch",
           "epochs_run", "train_time_s", "keys_in_pass", "input", "keys"]
FUSION_PLOT = "fusion_weights.png"


def _row(summary):
    """A CSV row; a fusion row has no t and block, its keys instead."""
    row = {c: summary.get(c) for c in COLUMNS}
    row["keys"] = " + ".join(summary["keys"]) if summary.get("keys") else None
    return row


def parse_heads(heads):
    if isinstance(heads, str):
        heads = ALL_HEADS[:4] if heads == "all" else heads.split(",")
    heads = [check_head(h.strip()) for h in heads if h.strip()]
    if not heads:
        raise ProbeError("no heads given: e.g. --heads linear,mlp,cnn,attention")
    return list(dict.fromkeys(heads))


def compare(train, test=None, *, heads=("linear", "mlp", "cnn", "attention"), t="all",
            blocks="all", keys=None, out=None, comparable_size=False, progress=True,
            **options):
    """Train and evaluate every head on every (t, block) of ``train`` selected by ``t`` x
    ``blocks`` or by ``keys`` (the grammar of :mod:`probe.selection`).

    Returns one row (dict with the :data:`COLUMNS`) per (key, head); with ``out`` (a
    directory) also writes results.csv, results.md, results.json, accuracy_vs_t.png and
    heads.png there.  Options as for :func:`probe.fit`.
    """
    heads = parse_heads(heads)
    if heads == ["fusion"]:
        raise ProbeError("compare the fusion head with single-key heads, e.g. --heads "
                         "linear,attention,fusion (for the fusion head alone: probe fit --head "
                         "fusion)")
    head_opts, cfg = split_options(options)
    with opened(train) as tr:
        keys = tr.select(t, blocks, keys)
        with Setup(tr, test, keys, cfg) as setup:
            for h in heads:  # fail on a head/feature mismatch before any training
                if h == "fusion":
                    fusion_views(setup, keys, head_opts)
                for k in keys if h != "fusion" else ():
                    setup.view(k, h)
            results = []
            for h in heads:
                results += train_heads(setup, h, keys, head_opts, comparable_size, progress)
            rows = [_row(r.summary) for r in results]
            if out is not None:
                write_report(out, rows, [r.summary for r in results], setup)
    return rows


def write_report(out, rows, summaries, setup):
    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, "results.csv"), newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    atomic_json([{k: v for k, v in s.items() if k != "predictions"} for s in summaries],
              os.path.join(out, "results.json"))
    with atomic_write(os.path.join(out, "results.md")) as f:
        f.write(markdown_table(rows, setup))
    plot_accuracy_vs_t(rows, os.path.join(out, "accuracy_vs_t.png"))
    plot_heads(rows, os.path.join(out, "heads.png"))
    for s in summaries:
        if s.get("key_weights"):
            plot_key_weights(s, os.path.join(out, FUSION_PLOT))


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def _count(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _fusion_lines(fused):
    lines = []
    for r in fused:
        n = len(r["keys"].split(" + "))
        lines += ["", f"Fusion head: one head on all {n} keys, mixed with learned weights "
                      f"(weights in results.json and {FUSION_PLOT}): top-1 {_pct(r['top1'])} "
                      f"({_count(r['params'])} parameters)."]
    return lines


def markdown_table(rows, setup):
    fused = [r for r in rows if r["keys"]]
    rows = [r for r in rows if not r["keys"]]
    heads = list(dict.fromkeys(r["head"] for r in rows))
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    keys = sorted(dict.fromkeys((r["t"], r["block"]) for r in rows),
                  key=lambda k: (blocks.index(k[1]), k[0]))
    cell = {(r["t"], r["block"], r["head"]): r for r in rows}
    where = (f"test file `{setup.test.path}`" if setup.test is not None
             else f"the validation split ({len(setup.val_rows)} samples of the train file)")
    lines = [f"Top-1 accuracy (%) on {where}, training on `{setup.train.path}` "
             f"({len(setup.train_rows)} samples); parameter counts in brackets.", ""]
    lines.append("| block | t | " + " | ".join(heads) + " |")
    lines.append("|---|---|" + "---|" * len(heads))
    for t, b in keys:
        cells = [f"{_pct(cell[t, b, h]['top1'])} ({_count(cell[t, b, h]['params'])})"
                 for h in heads]
        lines.append(f"| {b} | {'-' if t is None else t} | " + " | ".join(cells) + " |")
    lines += ["", "Best (t, block) per head:", ""]
    for h in heads:
        best = max((r for r in rows if r["head"] == h), key=lambda r: r["top1"])
        how = (f"trained on {best['keys_in_pass']} keys in one pass of {best['train_time_s']:.1f} s"
               if best["epochs_run"] is not None else f"fit in {best['train_time_s']:.1f} s")
        lines.append(f"- {h}: {_pct(best['top1'])} at {key_label((best['t'], best['block']))} "
                     f"({how})")
    lines += _fusion_lines(fused)
    notes = dict.fromkeys(setup.notes)
    if any("global-average-pooled" in r["input"] for r in rows):
        notes["linear/mlp/logreg/knn on spatial maps use the global-average-pooled map"] = None
    lines += [""] + [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_t(rows, path):
    """One panel per block: top-1 against t, one line per head (the fusion head, which
    reads every key, as a dashed level)."""
    plt = _pyplot()
    fused = [r for r in rows if r["keys"]]
    rows = [r for r in rows if not r["keys"]]
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    heads = list(dict.fromkeys(r["head"] for r in rows))
    cols = min(4, len(blocks))
    nrows = -(-len(blocks) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False,
                             sharey=True)
    for ax, b in zip(axes.flat, blocks):
        for h in heads:
            pts = sorted((r["t"], 100 * r["top1"]) for r in rows
                         if r["block"] == b and r["head"] == h and r["t"] is not None)
            colour = f"C{heads.index(h)}"
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=h, color=colour)
            for r in rows:  # a network without timesteps: one level for all t
                if r["t"] is None and r["block"] == b and r["head"] == h:
                    ax.axhline(100 * r["top1"], ls=":", color=colour, label=f"{h} (no t)")
        for r in fused:
            ax.axhline(100 * r["top1"], ls="--", color="gray", label="fusion (all keys)")
        ax.set_title(b, fontsize=9)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 (%)")
    for ax in list(axes.flat)[len(blocks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Accuracy against timestep, per block")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_heads(rows, path):
    """Heads side by side: per block, each head's best top-1 over t (labelled with that t);
    the fusion head, on all keys, as a dashed level."""
    plt = _pyplot()
    import numpy as np

    fused = [r for r in rows if r["keys"]]
    rows = [r for r in rows if not r["keys"]]
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    heads = list(dict.fromkeys(r["head"] for r in rows))
    width = 0.8 / len(heads)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(blocks) * max(1, len(heads) / 2)), 3.8))
    x = np.arange(len(blocks))
    for i, h in enumerate(heads):
        best = [max((r for r in rows if r["block"] == b and r["head"] == h),
                    key=lambda r: r["top1"]) for b in blocks]
        bars = ax.bar(x + (i - (len(heads) - 1) / 2) * width, [100 * r["top1"] for r in best],
                      width, label=h)
        for bar, r in zip(bars, best):
            ax.annotate("" if r["t"] is None else f"t{r['t']}",  # no t: nothing to label
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=6)
    for r in fused:
        ax.axhline(100 * r["top1"], ls="--", color="gray", label="fusion (all keys)")
    ax.set_xticks(x)
    tilt = len(blocks) > 4
    ax.set_xticklabels(blocks, rotation=30 if tilt else 0, ha="right" if tilt else "center",
                       fontsize=8)
    ax.set_ylabel("best top-1 over t (%)")
    ax.set_title("Heads side by side (label: the best t)")
    lo = min(100 * r["top1"] for r in rows + fused)
    ax.set_ylim(max(0, lo - 10), 104)
    ax.set_yticks([v for v in ax.get_yticks() if v <= 100])
    ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center",
               ncol=len(heads) + len(fused), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
