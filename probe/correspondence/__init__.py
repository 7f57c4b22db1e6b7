"""Dense semantic correspondence: match keypoints with block feature maps, score PCK.

:func:`correspond` loads image pairs (:func:`load_pairs`: ``spair:ROOT``,
``pf-pascal:ROOT``, ``pf-willow:ROOT`` or ``warp:ROOT``), extracts (or reuses) one
feature map per image (:mod:`.features`), matches every source keypoint in the target
(:mod:`.match`, DIFT's protocol by default) and scores PCK in original coordinates
(:mod:`.pck`).  Each selected (t, block) key is a variant; ``concat`` makes one variant of
all of them.  Outputs (:mod:`.output`): ``pck.json``, ``pck_categories.csv`` and figures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from ..errors import ProbeError, suggest
from .match import MatchOptions, match_pair
from .pairs import THRESHOLDS, PairSet, load_pf_pascal, load_pf_willow, load_spair
from .pck import check_alphas, score_pairs, summarise
from .warp import WarpOptions, load_warp

__all__ = ["correspond", "CorrespondOptions", "MatchOptions", "WarpOptions", "load_pairs",
           "PRESETS", "match_pair"]

DATASETS = ("spair", "pf-pascal", "pf-willow", "warp")

# DIFT's settings (docs/correspond.md cites the file and line of each).
PRESETS: dict[str, dict[str, Any]] = {
    "dift-sd": dict(model="sd-2.1", image_size=768, t=261, blocks="up_blocks.1", ensemble=8,
                    prompt="a photo of a {class}"),
    "dift-adm": dict(model="adm-256-uncond", image_size=512, t=101, blocks="output_blocks.4",
                     ensemble=8),
}


@dataclass(frozen=True)
class CorrespondOptions:
    """What is matched and how it is scored (model and data are arguments)."""
    alphas: tuple[float, ...] = (0.1,)
    threshold: str | None = None       # None: the benchmark's own (bbox, img or kps)
    match: MatchOptions = field(default_factory=MatchOptions)
    concat: bool = False               # one variant of all keys, each L2-normalised first
    image_size: int | None = None      # side of the square images fed (None: the model's)
    ensemble: int = 1
    seed: int = 0                      # noise seed of the extraction
    warp: WarpOptions = field(default_factory=WarpOptions)
    limit: int | None = None           # only the first N pairs
    figure_pairs: int = 4
    precision: str = "fp32"           # the extraction's forward (probe.precision)

    def __post_init__(self) -> None:
        check_alphas(self.alphas)
        if self.threshold is not None and self.threshold not in THRESHOLDS:
            raise ProbeError(f"unknown PCK threshold {self.threshold!r}: use one of "
                             f"{', '.join(THRESHOLDS)}")
        if self.limit is not None and self.limit < 1:
            raise ProbeError(f"--limit must be at least 1, not {self.limit}")


def load_pairs(data: str, split: str = "test", warp: WarpOptions = WarpOptions(),
               limit: int | None = None) -> PairSet:
    """A pair set from ``NAME:ROOT`` (see :data:`DATASETS`); ``limit``: the first pairs."""
    name, _, root = str(data).partition(":")
    name = name.strip().lower()
    if name not in DATASETS:
        raise ProbeError(f"unknown correspondence data {name!r}{suggest(name, DATASETS)}: use "
                         f"{', '.join(d + ':ROOT' for d in DATASETS)}")
    if not root:
        raise ProbeError(f"--data {name} needs a folder: {name}:ROOT")
    if name == "warp":
        ps = load_warp(root, replace(warp, limit=limit))
    else:
        ps = {"spair": load_spair, "pf-pascal": load_pf_pascal,
              "pf-willow": load_pf_willow}[name](root, split)
    if limit is not None and len(ps.pairs) > limit:
        ps.pairs = ps.pairs[:limit]
        keep = set(ps.image_ids())
        ps.images = {k: v for k, v in ps.images.items() if k in keep}
        ps.spec += f"?limit={limit}" if name != "warp" else ""
    return ps


def _variants(files: Sequence[Any], t: Any, blocks: Any, keys: Any, concat: bool
              ) -> list[tuple[str, list[Any], list[list[tuple]]]]:
    """(name, files, keys per file) of every variant."""
    if len(files) > 1 and not concat:
        raise ProbeError("several feature files are fused into one variant: pass --concat "
                         "(API: CorrespondOptions(concat=True))")
    chosen = [f.select(t, blocks, keys) for f in files]
    if concat:
        name = " + ".join(f"{os.path.basename(f.path)}:{_label(k)}" if len(files) > 1
                          else _label(k) for f, ks in zip(files, chosen) for k in ks)
        return [(name, list(files), chosen)]
    return [(_label(k), [files[0]], [[k]]) for k in chosen[0]]


def _label(key: tuple) -> str:
    from ..selection import key_label

    return key_label(key)


def correspond(model: Any = None, data: str = "warp:demo", t: Any = None, blocks: Any = None,
               keys: Any = None, out: str | os.PathLike | None = None, *,
               features: Sequence[str | os.PathLike] | None = None, preset: str | None = None,
               options: CorrespondOptions = CorrespondOptions(), split: str = "test",
               cache: str | os.PathLike | None = None, device: Any = None, batch_size: int = 8,
               overwrite: bool = False, progress: bool = True, log: Callable[[str], Any] = print,
               command: str | None = None, **model_kwargs: Any) -> dict[str, Any]:
    """Match the keypoints of ``data``'s pairs with ``model``'s block maps at ``t`` x
    ``blocks`` (or with the maps in ``features`` files) and score PCK.  Writes
    ``out/pck.json`` (returned), ``out/pck_categories.csv`` and figures when ``out`` is
    given.  ``preset``: ``dift-sd`` or ``dift-adm`` (:data:`PRESETS`) fills what is not
    given.  ``model_kwargs`` go to :func:`probe.load_model` (``prompt=`` for sd)."""
    from .run import run_correspond

    if preset is not None:
        if preset not in PRESETS:
            raise ProbeError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}")
        p = PRESETS[preset]
        model = model or p["model"]
        t = p["t"] if t is None and keys is None else t
        blocks = p["blocks"] if blocks is None and keys is None else blocks
        options = replace(options, image_size=options.image_size or p["image_size"],
                          ensemble=p["ensemble"] if options.ensemble == 1 else options.ensemble)
        if "prompt" in p and "prompt" not in model_kwargs:
            model_kwargs["prompt"] = p["prompt"]
    if (model is None) == (features is None):
        raise ProbeError("give a model to extract maps with, or feature files (--features), "
                         "not both")
    return run_correspond(model, data, t, blocks, keys, out, features=features, options=options,
                          split=split, cache=cache, device=device, batch_size=batch_size,
                          overwrite=overwrite, progress=progress, log=log, command=command,
                          preset=preset, model_kwargs=model_kwargs)

