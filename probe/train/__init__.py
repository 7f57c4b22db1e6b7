"""Training: the l-DAE recipe and its ablations, DDPM training of DiT/ADM, the supervised
reference classifier, one loop.

``probe train ldae|dit|adm|classifier|tokenizer`` (probe.cli.train) is the command; the
pieces are :mod:`.pca` and :mod:`.tokenizers` (the l-DAE's first stage: PCA, patch-wise
AE/VAE, convolutional VAE), :mod:`.ldae`, :mod:`.ddpm` and :mod:`.classifier`
(objectives) and :mod:`.loop` (AdamW, checkpoints every epoch, exact resume, JSON log).
"""
from .loop import Images, train

__all__ = ["Images", "train"]
