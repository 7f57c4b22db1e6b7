"""Stable Diffusion XL U-Nets through diffusers: loading and checks (`load.py`) and the
extractor (`extractor.py`, the sd family's with SDXL's conditioning)."""
from .extractor import SDXLExtractor, create

__all__ = ["SDXLExtractor", "create"]
