"""`probe compare --task segmentation`: every segmentation head on every selected key (and,
with ``fused=True``, each head on all the keys concatenated), as a CSV, a markdown table,
JSON and a figure of mIoU against t per block."""
from __future__ import annotations

import csv
import os
from typing import Any

from ...errors import ProbeError
from ...files import atomic_json, atomic_write
from ...selection import Spec, key_label
from ...store import opened
from .fit import check_seg_head, fit_segmentation

COLUMNS = ["t", "block", "keys", "head", "params", "miou", "miou_lo", "miou_hi",
           "pixel_accuracy", "val_miou", "train_time_s"]
OUTPUTS = ("results.csv", "results.md", "results.json", "miou_vs_t.png")


def _row(s: dict) -> dict:
    ci = s.get("miou_ci") or [None, None]
    row = {c: s.get(c) for c in COLUMNS}
    row.update(keys=" + ".join(s["keys"]), miou_lo=ci[0], miou_hi=ci[1])
    return row


def compare_segmentation(train: Any, test: Any = None, *, heads: Any = ("seg-linear",), t: Spec = "all",
                         blocks: Spec = "all", keys: Spec = None, fused: bool = False,
                         out: str | os.PathLike | None = None, progress: bool = True,
                         **options: Any) -> list[dict]:
    """Train and score each of ``heads`` on every selected key (``fused``: also on all the
    keys at once); returns one row per (keys, head) and, with ``out``, writes
    :data:`OUTPUTS` there.  Options as for :func:`~probe.heads.dense.fit.fit_segmentation`."""
    heads = [check_seg_head(h.strip()) for h in
             (heads.split(",") if isinstance(heads, str) else heads) if h.strip()]
    if not heads:
        raise ProbeError("no heads given: e.g. --heads seg-linear,seg-mlp")
    with opened(train) as tr:
        chosen = tr.select(t, blocks, keys)
    runs = [[key_label(k)] for k in chosen] + ([[key_label(k) for k in chosen]]
                                               if fused and len(chosen) > 1 else [])
    rows, summaries = [], []
    for h in heads:
        for ks in runs:
            r = fit_segmentation(train, keys=ks, head=h, test=test, progress=progress, **options)
            summaries.append(r.summary)
            rows.append(_row(r.summary))
    if out is not None:
        write_report(out, rows, summaries)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| keys | head | params | mIoU (%) [95 % CI] | pixel accuracy (%) |",
             "|---|---|---|---|---|"]
    for r in rows:
        ci = (f" [{100 * r['miou_lo']:.1f}, {100 * r['miou_hi']:.1f}]"
              if r["miou_lo"] is not None else "")
        lines.append(f"| {r['keys']} | {r['head']} | {r['params']:,} | {100 * r['miou']:.1f}{ci} "
                     f"| {100 * r['pixel_accuracy']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(out: str | os.PathLike, rows: list[dict], summaries: list[dict]) -> None:
    from ...report.segment import plot_miou_vs_t

    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, "results.csv"), newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with atomic_write(os.path.join(out, "results.md")) as fh:
        fh.write(markdown(rows))
    atomic_json(summaries, os.path.join(out, "results.json"))
    plot_miou_vs_t(rows, os.path.join(out, "miou_vs_t.png"))
