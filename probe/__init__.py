"""probe: what do pretrained diffusion models know about images?

Python API (the CLI is a thin layer over these):

- :func:`load_model` — a diffusion network with its schedule, pipeline and blocks.
- :func:`extract` — stream block features at chosen timesteps into an HDF5 file.
- :func:`open_features` — read such a file.
- :func:`fit` — train a probe head on cached features.
- :func:`cka` — CKA between blocks and timesteps, within one file or between two.
"""
from .extraction import extract
from .extractors.registry import load_model
from .heads.fit import fit
from .measures import cka
from .store import open_features
from .version import __version__

__all__ = ["load_model", "extract", "open_features", "fit", "cka", "__version__"]
