"""guided-diffusion's ADM U-Net (`unet.py`) and its extractor (`extractor.py`)."""
from .extractor import ADMExtractor, create

__all__ = ["ADMExtractor", "create"]
