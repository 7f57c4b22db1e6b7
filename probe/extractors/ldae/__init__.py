"""The latent denoising autoencoder (Chen, Liu, Xie & He 2024): its config (`config.py`),
tokenizers (`tokenizer.py`, `convvae.py`) and the network and extractor (`extractor.py`)."""
from .extractor import LDAEExtractor, create

__all__ = ["LDAEExtractor", "create"]
