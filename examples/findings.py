"""The findings study: `probe demo`'s study on the full official Fashion-MNIST split, with
every shipped model and its random-init baseline, and a plain statement of which findings
of the two papers hold at this scale.

    python examples/findings.py --out runs/findings

Writes OUT/report.md + index.html (the demo report: figures, tables) and OUT/findings.md
(the summary table and the verdicts that README.md quotes, and how the diffusion
features compare with the supervised reference ``sup-fmnist``).  Finished models are reused
from OUT, so the study can be stopped and resumed.  Takes about an hour on 2 CPU cores:
not part of CI (tests/test_findings.py runs it on a few images).
"""
import argparse
import json
import os

from probe.demo import is_reference, run_demo, shipped_models, shipped_references
from probe.heads.compare import compare
from probe.train.loop import atomic_json

# A 28 px ADM U-Net costs about 1 GFLOP per image and forward pass and runs about 30 times
# slower than a shipped ViT: the full split at 4 timesteps would take about two hours per
# model on 2 CPU cores.
# It gets the model cards' budget instead: the first 10,000 train images, the whole test
# split, two timesteps.
OVERRIDES = {"adm-fmnist": dict(limit=10000, timesteps=[10, 100])}

# Two accuracies on the 10,000-image test set closer than this are called a tie: about two
# standard errors of a difference of proportions near 80 %.
TIE = 0.008


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/findings")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (default: full split)")
    p.add_argument("--models", help="comma-separated (default: every shipped model)")
    p.add_argument("--limit", type=int, help="first N images per split (a quick check)")
    p.add_argument("--epochs", type=int, help="head epochs (default: each head's own)")
    p.add_argument("--sweep", help="results.json of scripts/ldae_sweep.py, for the d finding")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    names = args.models.split(",") if args.models else shipped_models() + shipped_references()
    refs = [m for m in names if is_reference(m)]  # the supervised reference: no t, no baseline
    models = [m for m in names if m not in refs]
    run_demo(args.out, models=names, data=args.data, limit=args.limit, epochs=args.epochs,
             baselines=True, batch_size=256, progress=not args.quiet,
             overrides={} if args.limit else OVERRIDES)
    sections = {}
    for label in names + [f"{m}-random-init" for m in models]:
        with open(os.path.join(args.out, label, "section.json")) as fh:
            sections[label] = json.load(fh)
    versus = []
    if refs:
        with open(os.path.join(args.out, "cka-vs-reference.json")) as fh:
            versus = json.load(fh)
    for m in models:
        sections[m]["matched"] = matched_size_heads(args, sections[m])
    sweep = None
    if args.sweep:
        with open(args.sweep) as fh:
            sweep = json.load(fh)
    lines = (table(sections, models, refs) + ["", "At matched size (`--comparable-size`: every "
             "head sized to about the linear head's parameter count), same key:", ""]
             + matched_table(sections, models) + [""] + verdicts(sections, models, sweep)
             + reference_lines(sections, refs, versus))
    path = os.path.join(args.out, "findings.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"findings: {path}")
    return 0


def matched_size_heads(args, section):
    """The seed paper's fair comparison: every head on the best key, sized to about the
    linear head's parameter count (`--comparable-size`).  Cached next to the section."""
    path = os.path.join(args.out, section["dir"], "heads-matched.json")
    key = dict(best=[section["best"]["t"], section["best"]["block"]], epochs=args.epochs,
               settings=section["settings"])
    if os.path.exists(path):
        with open(path) as fh:
            cached = json.load(fh)
        if cached["key"] == key:
            return cached["rows"]
    rows = compare(section["files"]["train"], section["files"]["test"], t=section["best"]["t"],
                   blocks=section["best"]["block"], comparable_size=True, epochs=args.epochs,
                   out=os.path.join(args.out, section["dir"], "heads-matched"),
                   progress=not args.quiet)
    rows = [dict(head=r["head"], top1=float(r["top1"]), params=int(r["params"])) for r in rows]
    atomic_json(dict(key=key, rows=rows), path)  # a killed run leaves no half-written cache
    return rows


def head_top1(section, head):
    return next((r["top1"] for r in section["heads"] if r["head"] == head), None)


def pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def table(sections, models, refs=()):
    heads = [r["head"] for r in sections[models[0]]["heads"]]
    rows = ["| model | best (t, block) | " + " | ".join(heads)
            + " | random init: best (t, block), linear |",
            "|---|---|" + "---|" * len(heads) + "---|"]
    most = max(sections[m]["sizes"]["train"] for m in models)
    for m in models:
        s, r = sections[m], sections[f"{m}-random-init"]
        budget = (f" ({s['sizes']['train']:,} train images, t in {s['ts']})"
                  if s["sizes"]["train"] < most else "")
        rows.append(f"| `{m}`{budget} | t={s['best']['t']}, {s['best']['block']} | "
                    + " | ".join(pct(head_top1(s, h)) for h in heads)
                    + f" | t={r['best']['t']}, {r['best']['block']}: {pct(r['best']['top1'])} |")
    for m in refs:  # a supervised network on the clean image: its linear probe only
        s = sections[m]
        rows.append(f"| `{m}` (supervised reference, no t) | {s['best']['block']} | "
                    + " | ".join(pct(head_top1(s, h)) for h in heads) + " | – |")
    return rows


def matched_table(sections, models):
    heads = [r["head"] for r in sections[models[0]]["matched"]]
    rows = ["| model | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for m in models:
        cells = {r["head"]: f"{pct(r['top1'])} ({r['params']:,})" for r in sections[m]["matched"]}
        rows.append(f"| `{m}` | " + " | ".join(cells.get(h, "–") for h in heads) + " |")
    return rows


def verdict(a, b):
    """'holds' if a beats b by more than a tie, 'tie' within it, else 'does not hold'."""
    if a - b > TIE:
        return "holds"
    return "tie" if abs(a - b) <= TIE else "does not hold"


def verdicts(sections, models, sweep):
    out = ["Verdicts (test top-1 on the best key of each model's linear grid; a difference "
           f"within {100 * TIE:.1f} points is called a tie):", ""]
    if "ldae-fmnist" in sections and "dae-pixel-fmnist" in sections:
        a, b = sections["ldae-fmnist"], sections["dae-pixel-fmnist"]
        v = verdict(a["best"]["top1"], b["best"]["top1"])
        out.append(f"- **Latent noise beats pixel noise** (l-DAE paper): {v}. Linear "
                   f"{pct(a['best']['top1'])} (latent) vs {pct(b['best']['top1'])} (pixel); "
                   "other heads: " + ", ".join(
                       f"{r['head']} {pct(r['top1'])} vs {pct(head_top1(b, r['head']))}"
                       for r in a["heads"] if r["head"] != "linear") + ".")
    if sweep:
        rows = sorted((r for r in sweep["results"]
                       if r["setting"].startswith("latent") and r["steps"] > 0),
                      key=lambda r: r["d"])
        if len(rows) >= 3:
            best = max(rows, key=lambda r: r["acc_raw"])
            middle = best is not rows[0] and best is not rows[-1]
            out.append(f"- **A middle latent dimension is best** (l-DAE paper): "
                       f"{'holds' if middle else 'does not hold'}. "
                       + ", ".join(f"d={r['d']} {pct(r['acc_raw'])}" for r in rows) + ".")
    else:
        out.append("- **A middle latent dimension is best** (l-DAE paper): not measured by "
                   "this script; see the l-DAE sweep (`scripts/ldae_sweep.py`).")
    for m in models:
        s = sections[m]
        blocks, ts = s["blocks"], sorted(s["ts"])
        b, t = s["best"]["block"], s["best"]["t"]
        inner = blocks.index(b) not in (0, len(blocks) - 1)
        small = ts.index(t) <= (len(ts) - 1) // 2
        spread = max(r["top1"] for r in s["grid"]) - min(r["top1"] for r in s["grid"])
        out.append(f"- **Intermediate blocks and small t are best** (seed paper), `{m}`: "
                   f"block {'holds' if inner else 'does not hold'} ({b} of "
                   f"{', '.join(blocks)}); t {'holds' if small else 'does not hold'} (t={t} of "
                   f"{ts}); the grid spans {100 * spread:.1f} points.")
    for m in models:
        s = sections[m]
        lin, att = head_top1(s, "linear"), head_top1(s, "attention")
        matched = {r["head"]: r["top1"] for r in s["matched"]}
        m_lin, m_att = matched.get("linear"), matched.get("attention")
        if None not in (lin, att, m_lin, m_att):
            out.append(f"- **An attention head beats a linear probe** (seed paper), `{m}`: "
                       f"{verdict(att, lin)} ({pct(att)} vs {pct(lin)}) at default sizes; "
                       f"{verdict(m_att, m_lin)} ({pct(m_att)} vs {pct(m_lin)}) at matched size.")
    for m in models:
        s, r = sections[m], sections[f"{m}-random-init"]
        out.append(f"- **Training helps** (both papers' premise), `{m}`: "
                   f"{verdict(s['best']['top1'], r['best']['top1'])} "
                   f"({pct(s['best']['top1'])} trained vs {pct(r['best']['top1'])} at random init).")
    return out


def reference_lines(sections, refs, versus):
    """The supervised reference: its linear probe next to each model's best, and where the
    diffusion features resemble its features (linear CKA on the test split)."""
    if not refs:
        return []
    out = ["", "Against the supervised reference (linear CKA on the test split between each "
           "diffusion (t, block) and the reference's blocks):", ""]
    for v in versus:
        s, ref = sections[v["model"]], sections[v["reference"]]
        deep, per_t = v["best_deepest"], v["per_t"]
        out.append(f"- `{v['model']}` vs `{v['reference']}`: linear probe {pct(s['best']['top1'])} "
                   f"against {pct(ref['best']['top1'])} (the reference's {ref['best']['block']}). "
                   f"Closest to its last block ({v['ref_block']}): t={deep['t']}, {deep['block']} "
                   f"(CKA {deep['cka']:.2f}); best block per t: "
                   + ", ".join(f"t={r['t']} {r['block']} {r['cka']:.2f}" for r in per_t)
                   + f". Most similar pair overall: t={v['best']['t']}, {v['best']['block']} with "
                   f"{v['best']['ref_block']} ({v['best']['cka']:.2f}).")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
