"""probe: what do pretrained diffusion models know about images?

Python API (the CLI is a thin layer over these):

- :func:`load_model` — a diffusion network with its schedule, pipeline and blocks.
- :func:`extract` — stream block features at chosen timesteps into an HDF5 file.
- :func:`open_features` — read such a file.
- :func:`fit` — train a probe head on cached features.
- :func:`cka` — CKA between blocks and timesteps, within one file or between two.
"""
__version__ = "0.1.0"

from .extractors.registry import load_model  # noqa: E402
from .extraction import extract  # noqa: E402
from .store import open_features  # noqa: E402

try:  # parts still being built land here as they arrive
    from .heads.fit import fit  # noqa: E402
except ImportError:  # pragma: no cover
    pass
try:
    from .cka import cka  # noqa: E402
except ImportError:  # pragma: no cover
    pass

__all__ = ["load_model", "extract", "open_features", "fit", "cka", "__version__"]
