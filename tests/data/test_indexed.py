"""The one indexed dataset wrapper: batched loading, and the training batches it feeds
equal the images read one by one."""
import pytest
import torch

from probe.data import load_dataset
from probe.data.indexed import Indexed
from probe.errors import ProbeError
from probe.train import loop


class _Counting:
    """A dataset that counts its batched reads (and has one unreadable image)."""

    def __init__(self, ds, bad=None):
        self.ds, self.bad, self.batches = ds, bad, 0
        self.labels, self.ids = ds.labels, ds.ids

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        image, label = self.ds[i]
        return (None if i == self.bad else image), label

    def load_batch(self, indices):
        self.batches += 1
        return [self[i][0] for i in indices]

    def bad_reason(self, i):
        return f"image {i} is broken"


def test_items_and_batched_items_agree():
    ds = load_dataset("demo", "train", 16, 1)
    wrapped = Indexed(ds)
    one = [wrapped[i] for i in (5, 1, 9)]
    many = wrapped.__getitems__([5, 1, 9])
    for (i, a, la, ra), (j, b, lb, rb) in zip(one, many):
        assert i == j and la == lb == int(ds.labels[i]) and ra is rb is None
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("preload", [0, 2 << 30])
def test_training_batches_equal_the_images_one_by_one(preload):
    """Read through the DataLoader in batches (preload 0) or held in memory: every batch of
    an epoch is the dataset's images in the epoch's order, bit for bit."""
    ds = _Counting(load_dataset("demo", "train", 16, 1))
    images = loop.Images(ds, limit=50, preload_limit=preload, progress=False)
    order = loop.epoch_order(3, 0, len(images))
    seen = 0
    for x, y in images.batches(order, 16):
        idx = order[seen:seen + len(x)]
        torch.testing.assert_close(x, torch.stack([ds.ds[int(i)][0] for i in idx]), rtol=0, atol=0)
        assert y.tolist() == [int(ds.labels[i]) for i in idx]
        seen += len(x)
    assert seen == 50 and ds.batches > 0  # read in batches, through load_batch


def test_an_unreadable_training_image_is_one_line():
    ds = _Counting(load_dataset("demo", "train", 16, 1), bad=7)
    with pytest.raises(ProbeError, match="image 7 is broken"):
        loop.Images(ds, limit=20, progress=False)
