"""Reference networks that see the clean image: any timm model (`timm:NAME`) or torchvision
classifier (`torchvision:NAME`)."""
from .extractor import ReferenceNet, create

__all__ = ["ReferenceNet", "create"]
