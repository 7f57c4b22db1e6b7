"""Model families (one module each), the registry and the block hooks."""
from .base import Extractor
from .registry import (ALIASES, FAMILIES, MODELS, block_shapes, load_architecture, load_model,
                       register)

__all__ = ["Extractor", "ALIASES", "FAMILIES", "MODELS", "block_shapes", "load_architecture",
           "load_model", "register"]
