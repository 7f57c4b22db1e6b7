"""probe: what do pretrained diffusion models know about images?

Python API (the CLI is a thin layer over these):

- :func:`load_model` — a diffusion network with its schedule, pipeline and blocks.
- :func:`extract` — stream block features at chosen timesteps into an HDF5 file.
- :func:`open_features` — read such a file.
- :func:`fit` — train a probe head on cached features.
- :func:`cka` — CKA between blocks and timesteps, within one file or between two.
"""
__version__ = "0.1.0"


def load_model(*args, **kwargs):
    from .extractors.registry import load_model as _load

    return _load(*args, **kwargs)


def extract(*args, **kwargs):
    from .extract import extract as _extract

    return _extract(*args, **kwargs)


def open_features(*args, **kwargs):
    from .store import open_features as _open

    return _open(*args, **kwargs)


def fit(*args, **kwargs):
    from .heads.fit import fit as _fit

    return _fit(*args, **kwargs)


def cka(*args, **kwargs):
    from .cka import cka as _cka

    return _cka(*args, **kwargs)
