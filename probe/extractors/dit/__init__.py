"""DiT (Peebles & Xie 2023): the original `models.py` network (`net.py`), the diffusers
format and the SD-VAE (`diffusers_format.py`), and the extractor (`extractor.py`)."""
from .extractor import DiTExtractor, create

__all__ = ["DiTExtractor", "create"]
