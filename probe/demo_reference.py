"""The reference networks in `probe demo`: networks that see the clean image (no timestep),
such as the shipped supervised ``sup-fmnist``, set against the diffusion models.

Each gets a linear probe per block (its best is drawn as a level in every diffusion
model's accuracy-against-t figure) and linear CKA between every (t, block) of each
diffusion model and its blocks: which blocks and noise levels resemble supervised
features.
"""
import os

from .extractors.registry import REFERENCE_PREFIXES  # the registry imports no torch


def shipped_references():
    """The shipped reference networks (no timesteps): the supervised ``sup-fmnist``."""
    from .extractors.registry import MODELS

    return [n for n, s in MODELS.items() if s.get("file") and s["family"] in REFERENCE_PREFIXES]


def is_reference(name):
    from .extractors.registry import resolve

    return resolve(name)[1]["family"] in REFERENCE_PREFIXES


def level(section):
    """A reference's best linear probe: the level drawn in the accuracy-against-t figures."""
    best = section["best"]
    return dict(name=section["name"], block=best["block"], top1=best["top1"])


def plot_linear_vs_t(grid, levels, path):
    """The linear probe's top-1 against t, one line per block, and each reference
    network's best linear probe as a dashed level."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for b in dict.fromkeys(r["block"] for r in grid):
        pts = sorted((r["t"], 100 * r["top1"]) for r in grid if r["block"] == b)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)
    for lv, style in zip(levels, ("--", ":", "-.")):
        ax.axhline(100 * lv["top1"], ls=style, color="black",
                   label=f"{lv['name']} ({lv['block']}, no t)")
    ts = sorted({r["t"] for r in grid})
    ax.set_xscale("log" if ts[0] > 0 and ts[-1] / ts[0] >= 20 else "linear")
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.set(xlabel="t", ylabel="linear probe top-1 (%)", title="Linear probe against t, per block")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def versus(out, diffusion_file, model, reference_file, ref, minibatch=None):
    """CKA between every (t, block) of a diffusion model and every block of a reference
    network (test split): the heatmap, the CSV and a summary of where they are alike."""
    from .measures import cka as cka_fn
    from .measures.plot import heatmaps

    res = cka_fn(diffusion_file, reference_file, across="all", minibatch=minibatch)
    png = f"cka-{model}-vs-{ref}.png"
    heatmaps(res, os.path.join(out, png), across="all")
    res.to_csv(os.path.join(out, png.replace(".png", ".csv")))
    m = res.matrix
    deepest = len(res.cols) - 1  # the reference's last block: the most supervised features
    i, j = divmod(int(m.argmax()), m.shape[1])
    per_t = {}
    for r, (t, block) in enumerate(res.rows):
        if t not in per_t or m[r, deepest] > per_t[t]["cka"]:
            per_t[t] = dict(t=t, block=block, cka=float(m[r, deepest]))
    k = int(m[:, deepest].argmax())
    return dict(model=model, reference=ref, png=png, ref_block=res.cols[deepest][1],
                best=dict(t=res.rows[i][0], block=res.rows[i][1], ref_block=res.cols[j][1],
                          cka=float(m[i, j])),
                best_deepest=dict(t=res.rows[k][0], block=res.rows[k][1],
                                  cka=float(m[k, deepest])),
                per_t=list(per_t.values()),
                against_last=[dict(t=t, block=b, cka=float(m[r, deepest]))
                              for r, (t, b) in enumerate(res.rows)])


def plot_versus(vs, path):
    """All diffusion models in one figure: CKA with the reference's last block against t,
    one panel per (model, reference), one line per diffusion block."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(vs), 3.2), layout="constrained")
    axes = fig.subplots(1, len(vs), sharey=True, squeeze=False)[0]
    for ax, v in zip(axes, vs):
        rows = v["against_last"]
        for b in dict.fromkeys(r["block"] for r in rows):
            pts = sorted((r["t"], r["cka"]) for r in rows if r["block"] == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)
        ts = sorted({r["t"] for r in rows})
        ax.set_xscale("log" if ts[0] > 0 and ts[-1] / ts[0] >= 20 else "linear")
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_title(v["model"], fontsize=9)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel(f"linear CKA with {vs[0]['reference']} {vs[0]['ref_block']}")
    axes[0].set_ylim(0, 1)
    fig.savefig(path, dpi=110)


def versus_md(versus):
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
