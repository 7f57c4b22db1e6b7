"""Stable Diffusion 1.x/2.x U-Nets through diffusers: loading and checks (`load.py`) and the
extractor (`extractor.py`)."""
from .extractor import SDExtractor, create

__all__ = ["SDExtractor", "create"]
