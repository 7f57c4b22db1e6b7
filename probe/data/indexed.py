"""A dataset read by index through a DataLoader, in batches where the dataset can.

Both the extraction loop and the training loop read images this way: each item is
``(index, image or None, label, why it is unreadable or None)``, and a batch of indices is
fetched with the dataset's ``load_batch`` (one transform call for the batch; the values
are those of ``dataset[i]`` one by one) when it has one.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

Item = tuple[int, Any, int, "str | None"]


class Indexed(torch.utils.data.Dataset):
    """``dataset`` as ``(index, image, label, bad reason)`` items (see the module)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Item:
        image, label = self.dataset[i]
        return i, image, int(label), (self.dataset.bad_reason(i) if image is None else None)

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:  # the DataLoader's batched fetch
        if not hasattr(self.dataset, "load_batch"):  # a dataset of the caller's own
            return [self[i] for i in indices]
        images = self.dataset.load_batch(indices)
        return [(i, image, int(self.dataset.labels[i]),
                 self.dataset.bad_reason(i) if image is None else None)
                for i, image in zip(indices, images)]
