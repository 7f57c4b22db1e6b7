"""The pages and figures of `probe demo`: report.md, index.html, each model's accuracy
against t, and the diffusion models set against a reference network.

A *section* is one model's results as :mod:`probe.demo` caches them (``name``, ``ts``,
``blocks``, ``grid`` of linear rows, ``best``, ``heads``, ``dir``, ``sizes``).  Every
accuracy carries its 95 % interval on the number of test images, and the keys the data
cannot tell from the best are named as ties.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from .demo_segment import segmentation_md
from .figures import log_snr_axis, new_figure, save_figure, t_axis
from .pages import INTERVAL_NOTE, accuracy, error_bars, pct, ties, write_page

Section = Mapping[str, Any]
Row = Mapping[str, Any]


def key_text(row: Row) -> str:
    """A key as the report writes it: 't=T, BLOCK', or the block alone (no t)."""
    return row["block"] if row["t"] is None else f"t={row['t']}, {row['block']}"


def _n(section: Section) -> int:
    return int(section["sizes"]["test"])


def _tied(section: Section) -> list[Row]:
    """The keys of the linear grid tied with the best (the best first)."""
    n = _n(section)
    return list(ties([dict(r, num_eval=n) for r in section["grid"]]))


def plot_linear_vs_t(grid: Sequence[Row], levels: Sequence[Mapping[str, Any]], n: int,
                     path: str | os.PathLike) -> str:
    """The linear probe's top-1 against t with its 95 % interval (``n`` test images), one
    line per block, and each reference network's best linear probe as a dashed level."""
    fig = new_figure(6.4, 4.0, layout="constrained")
    ax = fig.subplots()
    for b in dict.fromkeys(r["block"] for r in grid):
        pts = sorted((r["t"], r["top1"]) for r in grid if r["block"] == b)
        ax.errorbar([t for t, _ in pts], [100 * p for _, p in pts], capsize=2, marker="o",
                    label=b, yerr=error_bars([p for _, p in pts], [n] * len(pts)))
    for lv, style in zip(levels, ("--", ":", "-.")):
        ax.axhline(100 * lv["top1"], ls=style, color="black",
                   label=f"{lv['name']} ({lv['block']}, no t)")
    t_axis(ax, sorted({r["t"] for r in grid}), label="t")
    ax.set(ylabel="linear probe top-1 (%), 95 % interval",
           title="Linear probe against t, per block")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_linear_vs_log_snr(curves: Sequence[Mapping[str, Any]],
                           levels: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> str:
    """Every diffusion model on one noise axis: the linear probe's top-1 of its best block
    at each t, against that t's log-SNR, with the 95 % interval (``curves``: ``model``,
    ``logsnr``, ``top1``, ``n`` test images), and the reference networks as levels."""
    fig = new_figure(6.4, 4.0, layout="constrained")
    ax = fig.subplots()
    for c in curves:
        pts = sorted(zip(c["logsnr"], c["top1"]))
        ax.errorbar([x for x, _ in pts], [100 * p for _, p in pts], capsize=2, marker="o",
                    label=c["model"], yerr=error_bars([p for _, p in pts], [c["n"]] * len(pts)))
    for lv, style in zip(levels, ("--", ":", "-.")):
        ax.axhline(100 * lv["top1"], ls=style, color="black",
                   label=f"{lv['name']} ({lv['block']}, no t)")
    log_snr_axis(ax, [x for c in curves for x in c["logsnr"]])
    ax.set(ylabel="linear probe top-1 (%), best block, 95 % interval",
           title="Linear probe against log-SNR: every family on one noise axis")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def log_snr_md(png: str | None) -> list[str]:
    """The report's paragraph on the one noise axis (nothing without the figure)."""
    if not png:
        return []
    return ["## One noise axis", "", f"![accuracy against log-SNR]({png})", "",
            "Each model's t means a different amount of noise (DDPM steps, SiT's continuous t, "
            "the l-DAE's σ); here every model's linear probe (its best block at each t) is "
            "drawn against log-SNR = log(α_t²/σ_t²), as each feature file records it, so the "
            "families share one x-axis: noisier to the left.", ""]


def plot_versus(vs: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> str:
    """All diffusion models in one figure: CKA with the reference's last block against t,
    one panel per (model, reference), one line per diffusion block."""
    fig = new_figure(3.4 * len(vs), 3.2, layout="constrained")
    axes = fig.subplots(1, len(vs), sharey=True, squeeze=False)[0]
    for ax, v in zip(axes, vs):
        rows = v["against_last"]
        for b in dict.fromkeys(r["block"] for r in rows):
            pts = sorted((r["t"], r["cka"]) for r in rows if r["block"] == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)
        t_axis(ax, sorted({r["t"] for r in rows}), label="t")
        ax.set_title(v["model"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel(f"linear CKA with {vs[0]['reference']} {vs[0]['ref_block']}")
    axes[0].set_ylim(0, 1)
    return save_figure(fig, path)


def versus_md(versus: Sequence[Mapping[str, Any]]) -> list[str]:
    """The section on the diffusion models against the reference networks."""
    if not versus:
        return []
    md = ["## Diffusion features against a supervised reference", "",
          "Linear CKA on the test split between every (t, block) of a diffusion model (rows) and "
          "every block of a reference network that sees the clean image (columns): which blocks "
          "and noise levels resemble supervised features.", "",
          "![CKA with the reference's last block against t](cka-vs-reference.png)", "",
          "Every model at once: CKA between each diffusion block and the reference's last "
          "block, against t.", ""]
    for v in versus:
        b, dp = v["best"], v["best_deepest"]
        md += [f"![{v['model']} vs {v['reference']}]({v['png']})", "",
               f"{v['model']} against {v['reference']}: the most similar pair is t={b['t']}, "
               f"{b['block']} with {b['ref_block']} ({b['cka']:.2f}). Against "
               f"{v['reference']}'s last block ({v['ref_block']}) the closest is t={dp['t']}, "
               f"{dp['block']} ({dp['cka']:.2f}); the closest block at each t: "
               + ", ".join(f"t={r['t']} {r['block']} {r['cka']:.2f}" for r in v["per_t"]) + ".",
               ""]
    return md


def _summary(sections: Sequence[Section]) -> list[str]:
    """The table of each head's top-1 on each model's best key."""
    names = list(dict.fromkeys(r["head"] for s in sections for r in s["heads"]))
    rows = ["| model | best (t, block) | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names)]
    for s in sections:
        top1 = {r["head"]: accuracy(r["top1"], _n(s)) for r in s["heads"]}
        tied = len(_tied(s)) - 1
        best = key_text(s["best"]) + (f" ({tied} more tied)" if tied else "")
        rows.append(f"| {s['name']}{'' if s['ts'] else ' (reference, no t)'} | {best} | "
                    + " | ".join(top1.get(h, "–") for h in names) + " |")
    return ["## Summary: test top-1 (%) of each head on each model's best key", "",
            "Each accuracy with its 95 % interval in brackets; \"more tied\": other keys of the "
            "linear grid whose interval overlaps the best one's.", ""] + rows + [""]


def write_report(out: str | os.PathLike, sections: Sequence[Section],
                 between: Sequence[tuple[str, str, str, float]], elapsed: float,
                 data: str = "demo", versus: Sequence[Mapping[str, Any]] = (),
                 segmentation: Sequence[Mapping[str, Any]] = (),
                 logsnr_png: str | None = None) -> str:
    """report.md and index.html in ``out``; ``between``: (model a, model b, heatmap, its
    highest CKA) per pair of models.  Returns the path of report.md."""
    sizes = sections[0]["sizes"]
    what = ("the bundled balanced Fashion-MNIST subset" if data == "demo"
            else f"`{data}`, its official train and test splits")
    md = ["# probe demo report", "",
          f"Real data: {what} ({sizes['train']:,} train / {sizes['test']:,} test images). "
          "Features pooled to 2x2 maps (`--pool avg2`); linear and MLP heads see their "
          "global average. Heads were trained on the train split and evaluated on the test split.",
          INTERVAL_NOTE, f"Total time: {elapsed / 60:.1f} min.", ""]
    md += _summary(sections)
    levels = [s for s in sections if not s["ts"]]
    for s in sections:
        md += section_md(s, sizes, levels)
    if between:
        md += ["## Between models", ""]
        for a, b, png, top in between:
            md += [f"![{a} vs {b}]({png})", "",
                   f"Linear CKA between {a} (rows) and {b} (columns) at each t; the most similar "
                   f"pair of blocks reaches {top:.2f}.", ""]
    md += log_snr_md(logsnr_png)
    md += versus_md(versus)
    md += segmentation_md(segmentation)
    return write_page(out, md, title="probe demo")


def _best_text(s: Section) -> str:
    """The best key of the linear grid, its accuracy and the keys tied with it."""
    tied, n = _tied(s), _n(s)
    best = s["best"]
    text = f"the best key is {key_text(best)} ({accuracy(best['top1'], n, ' %')})"
    if len(tied) > 1:  # the best is one of them
        text += (f", tied within the 95 % intervals with " + ", ".join(
            f"{key_text(r)} ({pct(r['top1'])} %)" for r in tied if key_text(r) != key_text(best))
            + ": the data cannot tell which of these is best")
    return text


def section_md(s: Section, sizes: Mapping[str, int], references: Sequence[Section]) -> list[str]:
    """One model's section: its figures and what they show."""
    d, n, size = s["dir"], s["sizes"], _n(s)
    worst = min(s["grid"], key=lambda r: r["top1"])
    images = f"; {n['train']:,} train / {n['test']:,} test images" if n != sizes else ""
    cka = [f"![cka]({d}/cka.png)", "",
           "Linear CKA between every (t, block) on the test split: blocks close in depth and "
           "noise level represent the images alike; low values mark where the representation "
           "changes.", ""]
    if not s["ts"]:
        return [f"## {s['name']} (reference network, no timestep)", "",
                f"Blocks {', '.join(s['blocks'])}{images}; it sees the clean image. Linear probe "
                "per block: " + ", ".join(f"{r['block']} {accuracy(r['top1'], size, ' %')}"
                                          for r in s["grid"])
                + ". Its best is the dashed level in each diffusion model's accuracy figure.",
                ""] + cka[:2] + ["Linear CKA between its blocks on the test split.", ""]
    heads = sorted(s["heads"], key=lambda r: -r["top1"])
    ref = "".join(f" The dashed level is {r['name']}'s best linear probe ({r['best']['block']}, "
                  f"{accuracy(r['best']['top1'], _n(r), ' %')})." for r in references)
    return [f"## {s['name']}", "",
            f"Timesteps {s['ts']}, blocks {', '.join(s['blocks'])}{images}.", "",
            f"![accuracy vs t]({d}/accuracy_vs_t.png)", "",
            f"Linear probe accuracy against t for each block: {_best_text(s)}; the worst is "
            f"{key_text(worst)} ({accuracy(worst['top1'], size, ' %')}).{ref} Per-block panels: "
            f"`{d}/linear/accuracy_vs_t.png`.", "",
            f"![heads]({d}/heads/heads.png)", "",
            "Heads at their default sizes on the best key: "
            + ", ".join(f"{r['head']} {accuracy(r['top1'], size, ' %')} ({r['params']:,} params)"
                        for r in heads) + ".", ""] + cka
