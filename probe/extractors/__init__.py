"""Model families (one folder each), the registry, the block hooks, the schedules and the
one weights loader."""
from typing import TYPE_CHECKING, Any

from .registry import ALIASES, FAMILIES, MODELS, block_shapes, load_architecture, load_model, register

if TYPE_CHECKING:
    from .base import Extractor

__all__ = ["Extractor", "ALIASES", "FAMILIES", "MODELS", "block_shapes", "load_architecture",
           "load_model", "register"]


def __getattr__(name: str) -> Any:
    # the base class needs torch, the registry does not: `probe models` lists the zoo without it
    if name == "Extractor":
        from .base import Extractor

        return Extractor
    raise AttributeError(f"module 'probe.extractors' has no attribute {name!r}")
