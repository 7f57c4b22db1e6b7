"""probe: what do pretrained diffusion models know about images?

Python API (the CLI is a thin layer over these):

- :func:`load_model` — a diffusion network with its schedule, pipeline and blocks.
- :func:`extract` — stream block features at chosen timesteps into an HDF5 file.
- :func:`open_features` — read such a file.
- :func:`fit` — train a probe head on cached features.
- :func:`cka` — CKA between blocks and timesteps, within one file or between two.
- :func:`correspond` — dense semantic correspondence (keypoint matching with block maps,
  PCK): DIFT's protocol on SPair-71k, PF-PASCAL, PF-WILLOW and ``warp:`` pairs.
- :func:`similarity` — the same grid with other measures (mutual k-NN, CKNNA, RSA,
  Procrustes, SVCCA), permutation nulls and bootstrap intervals.

Each name is imported from its module on first use (PEP 562), so ``import probe`` and the
`probe` command start without torch; ``probe.load_model`` and the others pull it in.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .correspondence import correspond
    from .pipeline.run import extract
    from .extractors.registry import load_model
    from .heads.fit import fit
    from .measures import cka, similarity
    from .store import open_features

_API = {
    "load_model": "probe.extractors.registry",
    "extract": "probe.pipeline.run",
    "open_features": "probe.store",
    "fit": "probe.heads.fit",
    "cka": "probe.measures",
    "similarity": "probe.measures",
    "correspond": "probe.correspondence",
}

__all__ = ["load_model", "extract", "open_features", "fit", "cka", "similarity", "correspond",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
