"""The reference networks in `probe demo`: networks that see the clean image (no timestep),
such as the shipped supervised ``sup-fmnist``, set against the diffusion models.

Each gets a linear probe per block (its best is drawn as a level in every diffusion
model's accuracy-against-t figure) and linear CKA between every (t, block) of each
diffusion model and its blocks: which blocks and noise levels resemble supervised
features.  The figures and pages are :mod:`probe.report.demo`'s.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from .extractors.registry import REFERENCE_PREFIXES  # the registry imports no torch


def shipped_references() -> list[str]:
    """The shipped reference networks (no timesteps): the supervised ``sup-fmnist``."""
    from .extractors.registry import MODELS

    return [n for n, s in MODELS.items() if s.get("file") and s["family"] in REFERENCE_PREFIXES]


def is_reference(name: str) -> bool:
    from .extractors.registry import resolve

    return resolve(name)[1]["family"] in REFERENCE_PREFIXES


def level(section: Mapping[str, Any]) -> dict[str, Any]:
    """A reference's best linear probe: the level drawn in the accuracy-against-t figures."""
    best = section["best"]
    return dict(name=section["name"], block=best["block"], top1=best["top1"])


def versus(out: str, diffusion_file: str, model: str, reference_file: str, ref: str,
           minibatch: int | None = None) -> dict[str, Any]:
    """CKA between every (t, block) of a diffusion model and every block of a reference
    network (test split): the heatmap, the CSV and a summary of where they are alike."""
    from .measures import cka as cka_fn
    from .report.measures import heatmaps

    res = cka_fn(diffusion_file, reference_file, across="all", minibatch=minibatch)
    png = f"cka-{model}-vs-{ref}.png"
    heatmaps(res, os.path.join(out, png), across="all")
    res.to_csv(os.path.join(out, png.replace(".png", ".csv")))
    m = res.matrix
    deepest = len(res.cols) - 1  # the reference's last block: the most supervised features
    i, j = divmod(int(m.argmax()), m.shape[1])
    per_t: dict[Any, dict[str, Any]] = {}
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
