"""Training: the l-DAE recipe and its ablations, DDPM training of DiT/ADM, one loop.

``probe train ldae|dit|adm`` (probe.cli.train) is the command; the pieces are
:mod:`.pca` (the PCA tokenizer), :mod:`.ldae` and :mod:`.ddpm` (objectives) and
:mod:`.loop` (AdamW, checkpoints every epoch, exact resume, JSON log).
"""
from .loop import Images, train

__all__ = ["Images", "train"]
