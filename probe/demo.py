"""`probe demo`: the whole study, offline, on the bundled data and the shipped models.

For each model: extract features at several t and blocks (train and test splits of the
demo set), a grid of linear probes over (t, block), the four heads on the best key, CKA
across blocks and timesteps; then CKA between the models.  A reference network without
timesteps (the supervised ``sup-fmnist``, any ``timm:``/``torchvision:`` model) gets its
linear probe per block, drawn as a level in each model's accuracy-against-t figure, and
CKA between every diffusion (t, block) and its blocks: which blocks and noise levels
resemble supervised features.  Everything lands in one report folder: ``report.md``,
``index.html`` and the PNG figures they show.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

from .demo_reference import is_reference, level, shipped_references, versus
from .errors import ProbeError
from .selection import LogSNR, parse_t, spread, t_text
from .store import open_features


def shipped_models() -> list[str]:
    """The shipped diffusion models (weights in the package)."""
    from .extractors.registry import MODELS, REFERENCE_PREFIXES

    return [n for n, s in MODELS.items() if s.get("file") and s["family"] not in REFERENCE_PREFIXES]


# The shipped U-Net costs about 30 times a shipped ViT per image (a 28 px U-Net is about
# 1 GFLOP a pass): two timesteps keep the demo within minutes.
DEFAULT_OVERRIDES = {"adm-fmnist": dict(timesteps=[10, 100])}
# A continuous-time model's t at the log-SNR of the DDPM defaults t = 10, 100, 300, 600 of
# the linear schedule: t_SiT = sqrt(abar) / (sqrt(abar) + sqrt(1 - abar)) to 3 decimals
# (log-SNR within 0.01), and 1 - t_SiT in REPA's direction.
CONTINUOUS_DEFAULTS = {"sit": [0.139, 0.446, 0.745, 0.955], "repa": [0.045, 0.255, 0.554, 0.861]}


def default_timesteps(model: Any) -> list[float]:
    if getattr(model.schedule, "continuous", False):
        return CONTINUOUS_DEFAULTS[model.schedule.convention]
    t_max = model.num_timesteps
    return sorted({max(1, round(t_max * f)) for f in (0.01, 0.1, 0.3, 0.6)})


def run_demo(out: str = "probe-demo", models: Sequence[str] | None = None, data: str = "demo",
             t: Any = None, blocks: Any = None, max_blocks: int = 5, limit: int | None = None,
             heads: Sequence[str] = ("linear", "mlp", "cnn", "attention"),
             epochs: int | None = None, baselines: bool = False, batch_size: int = 64,
             seed: int = 0, device: str | None = None, overwrite: bool = False,
             overrides: dict[str, dict[str, Any]] | None = None, progress: bool = True,
             log: Callable[[str], Any] = print, timesteps: Any = None,
             segmentation: bool = False) -> str:
    """Run the study and write the report folder ``out``; returns the path of report.md.

    ``data``: the dataset spec (the bundled ``demo`` subset by default; ``fashion-mnist`` for
    the full official split).  ``t``/``blocks``: which features, in the grammar of
    :mod:`probe.selection` (default: four timesteps spread over the schedule and
    ``max_blocks`` blocks spread over the network; ``timesteps`` is the old name of ``t``).
    ``models``: diffusion models and reference networks (default: every shipped one);
    the references are compared with every diffusion model.
    ``baselines``: also study each diffusion model at random init (same architecture,
    untrained).
    ``seed`` seeds the noise and the heads.  Each model's results are kept in
    ``out/NAME/section.json``; a re-run with the same settings reuses them (and finished
    feature files), so a long study can be stopped and continued, or extended with more
    models; ``overwrite`` recomputes everything.  ``overrides``: per model name, a dict of
    ``limit`` and/or ``timesteps`` replacing the common ones (for a model too slow for the
    common budget; also applied to its baseline; default ``DEFAULT_OVERRIDES``, ``{}`` for
    none).
    """
    from .files import atomic_json
    from .report.demo import plot_linear_vs_t, plot_versus, write_report

    names = list(models or shipped_models() + shipped_references())
    refs = [m for m in names if is_reference(m)]
    models = [m for m in names if m not in refs]
    if not models:
        raise ProbeError("no diffusion model to study: name one in --models (see `probe models`)")
    entries = [(m, m, False, heads) for m in models]
    if baselines:  # a baseline only needs its linear grid
        entries += [(f"{m}-random-init", m, True, ("linear",)) for m in models]
    entries += [(r, r, False, ("linear",)) for r in refs]  # a linear probe per block
    os.makedirs(os.path.join(out, "features"), exist_ok=True)
    t0 = time.time()
    sections, files = [], {}
    ts = t if isinstance(t, LogSNR) else parse_t(timesteps if t is None else t)
    for label, name, random_init, model_heads in entries:
        log(f"== {label}")
        changes = (DEFAULT_OVERRIDES if overrides is None or t is not None else overrides
                   ).get(name, {})
        plan = dict(dict(limit=limit, timesteps=ts), **changes)
        plan.update(data=data, blocks=blocks, max_blocks=max_blocks, heads=model_heads,
                    epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                    overwrite=overwrite, progress=progress)
        section = _study_model(out, label, name, random_init, plan, log)
        files[label] = section["files"]
        sections.append(section)
    between = _between(out, models, files)
    levels = [level(s) for s in sections if s["name"] in refs]
    for s in sections:
        if s["name"] not in refs:
            plot_linear_vs_t(s["grid"], levels, s["sizes"]["test"],
                             os.path.join(out, s["dir"], "accuracy_vs_t.png"))
    vs = [versus(out, files[m]["test"], m, files[r]["test"], r, _cka_minibatch(files[m]["test"]))
          for r in refs for m in models]
    if vs:
        atomic_json(vs, os.path.join(out, "cka-vs-reference.json"))
        plot_versus(vs, os.path.join(out, "cka-vs-reference.png"))
    seg = _segmentation(out, sections, data, dict(
        limit=limit, epochs=epochs, seed=seed, device=device, batch_size=batch_size,
        overwrite=overwrite, progress=progress), log) if segmentation else []
    logsnr_png = _accuracy_vs_log_snr(out, sections, files, levels, log)
    report = write_report(out, sections, between, time.time() - t0, data, vs,
                          segmentation=seg, logsnr_png=logsnr_png)
    log(f"report: {report} (and {os.path.join(out, 'index.html')})")
    return report


def _between(out: str, models: Sequence[str], files: dict) -> list[tuple[str, str, str, float]]:
    """CKA heatmaps between every pair of diffusion models: (a, b, figure, highest CKA)."""
    from .measures import cka as cka_fn
    from .report.measures import heatmaps

    between = []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            # panels per shared t; a continuous-time model shares no t with a DDPM, so
            # the measures' default layout falls back to panels per block, then one grid
            res = cka_fn(files[a]["test"], files[b]["test"], across=None,
                         minibatch=_cka_minibatch(files[a]["test"]))
            png = f"cka-{a}-vs-{b}.png"
            heatmaps(res, os.path.join(out, png))
            res.to_csv(os.path.join(out, png.replace(".png", ".csv")))
            between.append((a, b, png, float(res.matrix.max())))
    return between


def _study_model(out, label, name, random_init, plan, log):
    """Features, linear grid, heads on the best key and CKA for one model; cached as JSON.
    ``plan``: the settings of :func:`run_demo` for this model."""
    from .measures import cka as cka_fn
    from . import extract, load_model
    from .report.measures import heatmaps
    from .pipeline.run import weights_sha256
    from .heads.compare import compare
    from .files import atomic_json
    from .extractors.schedules import t_for_log_snr

    model = load_model(name, random_init=random_init, device=plan["device"])
    timed = model.has_timesteps  # a reference network sees the clean image: no t
    ts: list[int | float] | None
    if isinstance(plan["timesteps"], LogSNR) and timed:  # each family's own t, cached as such
        ts = sorted({t_for_log_snr(model.schedule, x, label, log)
                     for x in plan["timesteps"].values})
    else:
        ts = list(plan["timesteps"] or default_timesteps(model)) if timed else None
    blocks = (spread(model.block_names, plan["max_blocks"]) if plan["blocks"] is None else
              sorted(model.resolve_blocks(plan["blocks"]), key=model.block_names.index))
    heads, epochs, limit, progress = plan["heads"], plan["epochs"], plan["limit"], plan["progress"]
    train = dict(progress=progress, epochs=epochs, seed=plan["seed"], device=plan["device"])
    settings = dict(name=name, random_init=random_init, weights_sha256=weights_sha256(model),
                    data=plan["data"], ts=ts, blocks=blocks, limit=limit, heads=list(heads),
                    epochs=epochs, seed=plan["seed"])
    mdir = os.path.join(out, label)
    cache = os.path.join(mdir, "section.json")
    section = None
    if os.path.exists(cache) and not plan["overwrite"]:
        with open(cache) as fh:
            section = json.load(fh)
        if section.get("settings") != settings:
            section = None
        elif section.get("stage") == "done":
            log(f"{label}: reusing {cache}")
            return section
    paths = {}
    for split in ("train", "test"):
        paths[split] = extract(model, plan["data"], split=split, t=ts, blocks=blocks, pool="avg2",
                               out=os.path.join(out, "features", f"{label}-{split}.h5"),
                               limit=limit, batch_size=plan["batch_size"], progress=progress,
                               noise_seed=plan["seed"], device=plan["device"],
                               overwrite=plan["overwrite"], log=log)
    if section is None:  # the heads are the slow part: keep them before going on
        grid = compare(paths["train"], paths["test"], heads=["linear"],
                       out=os.path.join(mdir, "linear"), **train)
        best = max(grid, key=lambda r: r["top1"])
        head_rows = [best] if not timed else compare(  # a reference: its linear grid only
            paths["train"], paths["test"], heads=list(heads), t=best["t"], blocks=best["block"],
            out=os.path.join(mdir, "heads"), **train)
        with open_features(paths["train"]) as ftr, open_features(paths["test"]) as fte:
            sizes = dict(train=len(ftr), test=len(fte))
        section = _jsonable(dict(name=label, settings=settings, ts=ts, blocks=blocks, grid=grid,
                                 best=best, heads=head_rows, dir=label, files=paths,
                                 sizes=sizes, stage="heads"))
        atomic_json(section, cache)
    across = "all" if timed else "blocks"
    within = cka_fn(paths["test"], across=across, minibatch=_cka_minibatch(paths["test"]))
    heatmaps(within, os.path.join(mdir, "cka.png"), across=across)
    within.to_csv(os.path.join(mdir, "cka.csv"))
    section["stage"] = "done"
    atomic_json(section, cache)
    return section


def _segmentation(out, sections, data, plan, log):
    """The segmentation section's results (trained models and references, no baselines)
    and its figure; none where the data has no masked twin."""
    from .demo_segment import seg_data, segment_section
    from .report.demo_segment import FIGURE, plot_segmentation

    if seg_data(data) is None:
        log(f"segmentation: skipped, {data!r} has no masks (use demo or fashion-mnist)")
        return []
    plan = dict(plan, data=seg_data(data))
    results = [segment_section(out, s, plan, log) for s in sections
               if not s["settings"]["random_init"]]
    plot_segmentation(results, os.path.join(out, FIGURE))
    return results


def _accuracy_vs_log_snr(out: str, sections: list, files: dict, levels: list,
                         log: Callable[[str], Any]) -> str | None:
    """accuracy_vs_logsnr.png from the linear grids already computed: each trained diffusion
    model's best block at each t, placed at the log-SNR its test file records."""
    from .report.demo import plot_linear_vs_log_snr

    curves = []
    for s in sections:
        if not s["ts"] or s["settings"]["random_init"]:
            continue
        with open_features(files[s["name"]]["test"]) as f:
            table = {t_text(t): v["logsnr"] for t, v in f.noise_levels().items()}
        if not table:
            log(f"{s['name']}: its features record no log-SNR (an older file): left out of "
                "accuracy_vs_logsnr.png")
            continue
        best: dict[str, float] = {}
        for r in s["grid"]:
            key = t_text(r["t"])
            best[key] = max(best.get(key, 0.0), r["top1"])
        ts = [k for k in best if k in table]
        curves.append(dict(model=s["name"], logsnr=[table[k] for k in ts],
                           top1=[best[k] for k in ts], n=s["sizes"]["test"]))
    if not curves:
        return None
    plot_linear_vs_log_snr(curves, levels, os.path.join(out, "accuracy_vs_logsnr.png"))
    return "accuracy_vs_logsnr.png"


def _cka_minibatch(path, full_batch_max=4096):
    """Full-batch CKA holds a Gram matrix per key (n^2 each): past a few thousand samples
    use the minibatch estimator instead."""
    with open_features(path) as f:
        return None if len(f) <= full_batch_max else 1024


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj
