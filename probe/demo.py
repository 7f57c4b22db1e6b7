"""`probe demo`: the whole study, offline, on the bundled data and the shipped models.

For each model: extract features at several t and blocks (train and test splits of the
demo set), a grid of linear probes over (t, block), the four heads on the best key, CKA
across blocks and timesteps; then CKA between the models.  Everything lands in one
report folder: ``report.md``, ``index.html`` and the PNG figures they show.
"""
import html
import os
import time

from .errors import ProbeError


def shipped_models():
    from .extractors.registry import MODELS

    return [name for name, spec in MODELS.items() if spec.get("file")]


def _spread(items, k):
    """At most k items, evenly spaced, keeping the first and last."""
    if len(items) <= k:
        return list(items)
    step = (len(items) - 1) / (k - 1)
    return list(dict.fromkeys(items[round(i * step)] for i in range(k)))


def default_timesteps(model):
    t_max = model.num_timesteps
    return sorted({max(1, round(t_max * f)) for f in (0.01, 0.1, 0.3, 0.6)})


def run_demo(out="probe-demo", models=None, timesteps=None, max_blocks=5, limit=None,
             heads=("linear", "mlp", "cnn", "attention"), epochs=None, progress=True, log=print):
    """Run the study and write the report folder ``out``; returns the path of report.md."""
    from . import cka as cka_fn
    from . import extract, load_model
    from .cka.plot import heatmaps
    from .heads.compare import compare

    models = models or shipped_models()
    if not models:
        raise ProbeError("no shipped models are registered: reinstall probe")
    os.makedirs(out, exist_ok=True)
    feat_dir = os.path.join(out, "features")
    os.makedirs(feat_dir, exist_ok=True)
    t0 = time.time()
    sections, files = [], {}
    for name in models:
        log(f"== {name}")
        model = load_model(name)
        ts = timesteps or default_timesteps(model)
        blocks = _spread(model.block_names, max_blocks)
        paths = {}
        for split in ("train", "test"):
            paths[split] = extract(model, "demo", split=split, t=ts, blocks=blocks, pool="avg2",
                                   out=os.path.join(feat_dir, f"{name}-{split}.h5"),
                                   limit=limit, batch_size=64, progress=progress, log=log)
        files[name] = paths
        mdir = os.path.join(out, name)
        grid = compare(paths["train"], paths["test"], heads=["linear"], out=os.path.join(mdir, "linear"),
                       progress=progress, epochs=epochs)
        best = max(grid, key=lambda r: r["top1"])
        head_rows = compare(paths["train"], paths["test"], heads=list(heads), t=best["t"],
                            blocks=best["block"], out=os.path.join(mdir, "heads"),
                            progress=progress, epochs=epochs)
        within = cka_fn(paths["test"], across="all")
        heatmaps(within, os.path.join(mdir, "cka.png"), across="all")
        within.to_csv(os.path.join(mdir, "cka.csv"))
        sections.append(dict(name=name, model=model, ts=ts, blocks=blocks, grid=grid, best=best,
                             heads=head_rows, dir=name))
    between = []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            res = cka_fn(files[a]["test"], files[b]["test"], across="blocks")
            png = f"cka-{a}-vs-{b}.png"
            heatmaps(res, os.path.join(out, png))
            res.to_csv(os.path.join(out, png.replace(".png", ".csv")))
            between.append((a, b, png, float(res.matrix.max())))
    report = _write_report(out, sections, between, time.time() - t0)
    log(f"report: {report} (and {os.path.join(out, 'index.html')})")
    return report


def _pct(x):
    return f"{100 * x:.1f}"


def _write_report(out, sections, between, elapsed):
    md = ["# probe demo report", "",
          "Real data: the bundled balanced Fashion-MNIST subset (2,000 train / 1,000 test "
          "images). Features pooled to 2x2 maps (`--pool avg2`); linear and MLP heads see their "
          "global average. Heads were trained on the train split and evaluated on the test split.",
          f"Total time: {elapsed / 60:.1f} min.", ""]
    summary = ["| model | best (t, block) | " + " | ".join(r["head"] for r in sections[0]["heads"])
               + " |", "|---|---|" + "---|" * len(sections[0]["heads"])]
    for s in sections:
        summary.append(f"| {s['name']} | t={s['best']['t']}, {s['best']['block']} | "
                       + " | ".join(_pct(r["top1"]) for r in s["heads"]) + " |")
    md += ["## Summary: test top-1 (%) of each head on each model's best key", ""] + summary + [""]
    for s in sections:
        d = s["dir"]
        worst = min(s["grid"], key=lambda r: r["top1"])
        heads = sorted(s["heads"], key=lambda r: -r["top1"])
        md += [f"## {s['name']}", "",
               f"Timesteps {s['ts']}, blocks {', '.join(s['blocks'])}.", "",
               f"![accuracy vs t]({d}/linear/accuracy_vs_t.png)", "",
               f"Linear probe accuracy against t for each block: the best key is t={s['best']['t']} "
               f"at {s['best']['block']} ({_pct(s['best']['top1'])} %), the worst t={worst['t']} at "
               f"{worst['block']} ({_pct(worst['top1'])} %).", "",
               f"![heads]({d}/heads/heads.png)", "",
               "Heads at their default sizes on the best key: "
               + ", ".join(f"{r['head']} {_pct(r['top1'])} % ({r['params']:,} params)" for r in heads)
               + ".", "",
               f"![cka]({d}/cka.png)", "",
               "Linear CKA between every (t, block) on the test split: blocks close in depth and "
               "noise level represent the images alike; low values mark where the representation "
               "changes.", ""]
    if between:
        md += ["## Between models", ""]
        for a, b, png, top in between:
            md += [f"![{a} vs {b}]({png})", "",
                   f"Linear CKA between {a} (rows) and {b} (columns) at each t; the most similar "
                   f"pair of blocks reaches {top:.2f}.", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    with open(os.path.join(out, "index.html"), "w") as fh:
        fh.write(_html(md))
    return path


def _html(md_lines):
    """A minimal rendering of the report's own markdown (headings, tables, images, text)."""
    body, table = [], []

    def flush_table():
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
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>probe demo</title>" \
           f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
