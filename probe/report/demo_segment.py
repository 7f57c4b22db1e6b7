"""The segmentation section of the `probe demo` report: mIoU against t per block, one
panel per diffusion model, the reference networks' best as dashed levels.

A *result* is one model's segmentation as :func:`probe.demo_segment.segment_section`
returns it (``name``, ``ts``, ``n_test``, ``rows`` of t, block, miou, miou_lo, miou_hi).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from .figures import new_figure, save_figure, t_axis
from .pages import pct

Result = Mapping[str, Any]
FIGURE = "segmentation_vs_t.png"


def _miou(r: Mapping[str, Any]) -> str:
    """'61.2 % [59.8, 62.5]': mIoU with its bootstrap interval over test images."""
    ci = f" [{pct(r['miou_lo'])}, {pct(r['miou_hi'])}]" if r["miou_lo"] is not None else ""
    return f"{pct(r['miou'])} %{ci}"


def _key(r: Mapping[str, Any]) -> str:
    return r["block"] if r["t"] is None else f"t={r['t']}, {r['block']}"


def best_and_tied(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The best row by mIoU, then the rows whose interval reaches the best one's: the data
    cannot tell them from the best."""
    rows = sorted(rows, key=lambda r: -r["miou"])
    lo = rows[0]["miou_lo"]
    return rows[:1] + [r for r in rows[1:] if lo is not None and r["miou_hi"] is not None
                       and r["miou_hi"] >= lo]


def plot_segmentation(results: Sequence[Result], path: str | os.PathLike) -> str:
    """mIoU (bootstrap 95 % band) against t, one panel per model with timesteps, one line
    per block; each model without timesteps is its best block as a dashed level."""
    timed = [r for r in results if r["ts"]]
    levels = [dict(best_and_tied(r["rows"])[0], name=r["name"]) for r in results if not r["ts"]]
    fig = new_figure(3.2 * max(1, len(timed)), 3.2, layout="constrained")
    axes = fig.subplots(1, max(1, len(timed)), sharey=True, squeeze=False)[0]
    for ax, res in zip(axes, timed):
        for b in dict.fromkeys(r["block"] for r in res["rows"]):
            pts = sorted((r for r in res["rows"] if r["block"] == b), key=lambda r: r["t"])
            x = [r["t"] for r in pts]
            line = ax.plot(x, [100 * r["miou"] for r in pts], marker="o", label=b)[0]
            if all(r["miou_lo"] is not None for r in pts):
                ax.fill_between(x, [100 * r["miou_lo"] for r in pts],
                                [100 * r["miou_hi"] for r in pts], alpha=0.15,
                                color=line.get_color())
        for lv, style in zip(levels, ("--", ":", "-.")):
            ax.axhline(100 * lv["miou"], ls=style, color="black",
                       label=f"{lv['name']} ({lv['block']}, no t)")
        t_axis(ax, res["ts"], label="t")
        ax.set_title(res["name"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("seg-linear test mIoU (%), 95 % band")
    return save_figure(fig, path)


def segmentation_md(results: Sequence[Result]) -> list[str]:
    """The report's segmentation section (nothing without results)."""
    if not results:
        return []
    n = results[0]["n_test"]
    md = ["## Segmentation: mIoU against t per block", "",
          "A `seg-linear` head (a 1x1 convolution, upsampled to the mask) on each block's map "
          "pooled to 4x4 (`--pool avg4`), trained on the train split of the masked twin of the "
          f"data and scored by mIoU on {n:,} test images; 95 % intervals are bootstrap "
          "intervals over the test images; keys whose interval reaches the best one's are tied with it.  Every key's "
          "mIoU: `MODEL/segmentation/results.md`.", "",
          f"![mIoU against t per block]({FIGURE})", "",
          "| model | best (t, block) | test mIoU [95 % CI] | tied with the best |",
          "|---|---|---|---|"]
    for res in results:
        best, *tied = best_and_tied(res["rows"])
        name = res["name"] + ("" if res["ts"] else " (reference, no t)")
        md.append(f"| {name} | {_key(best)} | {_miou(best)} | "
                  + ("; ".join(f"{_key(r)} ({pct(r['miou'])})" for r in tied) or "none") + " |")
    return md + [""]
