"""Rebuild probe/data/demo/fashion_mnist_demo.npz from the official Fashion-MNIST files.

A balanced subset: PER_CLASS_TRAIN images per class from the official train split and
PER_CLASS_TEST from the official test split, chosen with a fixed seed; each image keeps
its index in the official split (used as its sample id).
    python scripts/make_demo_data.py [FASHION_MNIST_ROOT]
"""
import os
import sys

import numpy as np

from probe.data.datasets import FASHION_MNIST_ROOT, read_idx

PER_CLASS_TRAIN, PER_CLASS_TEST, SEED = 200, 100, 0


def pick(labels, per_class, rng):
    idx = [np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False))
           for c in range(10)]
    return np.sort(np.concatenate(idx))


def main(root=FASHION_MNIST_ROOT):
    rng = np.random.default_rng(SEED)
    out = {}
    for split, prefix, k in (("train", "train", PER_CLASS_TRAIN), ("test", "t10k", PER_CLASS_TEST)):
        images = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
        idx = pick(labels, k, rng)
        out.update({f"{split}_images": images[idx], f"{split}_labels": labels[idx],
                    f"{split}_index": idx.astype(np.int32)})
    path = os.path.join(os.path.dirname(__file__), "..", "probe", "data", "demo",
                        "fashion_mnist_demo.npz")
    np.savez_compressed(path, **out)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main(*sys.argv[1:])
