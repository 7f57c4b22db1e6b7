"""The report's words: accuracies with their intervals, and the one markdown + HTML page
writer (``report.md`` and ``index.html``, both written atomically)."""
from __future__ import annotations

import html
import os
from typing import Any, Mapping, Sequence

from ..files import atomic_write
from ..heads.metrics import tied_with_best, wilson_interval

STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}img{max-width:100%}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}")


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal ('-' for none)."""
    return "-" if x is None else f"{100 * x:.1f}"


def interval(top1: float, n: int) -> tuple[float, float]:
    """The 95 % interval of an accuracy ``top1`` on ``n`` evaluated samples."""
    return wilson_interval(top1 * n, n)


def error_bars(top1s: Sequence[float], sizes: Sequence[int | None]) -> list[list[float]]:
    """matplotlib's ``yerr`` (in percentage points) of accuracies with their 95 % intervals:
    [below, above] per value, 0 where the size is unknown."""
    spans = [interval(p, n) if n else (p, p) for p, n in zip(top1s, sizes)]
    return [[max(0.0, 100 * (p - lo)) for p, (lo, _) in zip(top1s, spans)],
            [max(0.0, 100 * (hi - p)) for p, (_, hi) in zip(top1s, spans)]]


def accuracy(top1: float | None, n: int | None, unit: str = "") -> str:
    """'80.5 [78.0, 82.8]': an accuracy in percent with its 95 % Wilson interval on ``n``
    samples (no interval when ``n`` is unknown).  ``unit``: appended to the value, e.g.
    ' %'."""
    if top1 is None:
        return "-"
    if not n:
        return f"{pct(top1)}{unit}"
    lo, hi = interval(top1, n)
    return f"{pct(top1)}{unit} [{pct(lo)}, {pct(hi)}]"


def ties(rows: Sequence[Mapping[str, Any]], n_key: str = "num_eval") -> list[Mapping[str, Any]]:
    """The rows (each with ``top1`` and ``n_key``) the data cannot tell from the best one
    (see :func:`probe.heads.metrics.tied_with_best`), the best first."""
    rows = sorted(rows, key=lambda r: -r["top1"])
    tied = tied_with_best([r["top1"] for r in rows], [int(r[n_key] or 0) for r in rows])
    return [r for r, t in zip(rows, tied) if t]


INTERVAL_NOTE = ("Accuracies carry their 95 % Wilson interval on the number of evaluated "
                 "images, in brackets; keys whose intervals overlap the best one's are "
                 "reported as tied with it, since the data cannot tell them apart.")


def to_html(md_lines: Sequence[str], title: str = "probe report") -> str:
    """A minimal rendering of the report's own markdown (headings, tables, images, text)."""
    body: list[str] = []
    table: list[str] = []

    def flush_table() -> None:
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r) <= set("|-")]
            cells = ["<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}"
                                      f"</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
                     for i, row in enumerate(rows)]
            body.append("<table>" + "".join(cells) + "</table>")
            table.clear()

    for line in md_lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<img src="{html.escape(src[:-1])}" alt="{html.escape(alt)}">')
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def write_markdown(path: str | os.PathLike, text: str) -> str:
    """Write a markdown text atomically."""
    with atomic_write(path) as fh:
        fh.write(text)
    return os.fspath(path)


def write_page(folder: str | os.PathLike, md_lines: Sequence[str],
               title: str = "probe report") -> str:
    """``folder/report.md`` and its HTML rendering ``folder/index.html``, each written
    atomically; returns the path of report.md."""
    path = os.path.join(folder, "report.md")
    write_markdown(path, "\n".join(md_lines))
    with atomic_write(os.path.join(folder, "index.html")) as fh:
        fh.write(to_html(md_lines, title))
    return path
