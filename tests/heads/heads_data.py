"""Small feature files for the heads tests."""
import numpy as np

from probe.store import write_features

FAST = dict(epochs=12, batch_size=64, patience=12, progress=False)


def spatial_blobs(n, classes=4, channels=8, size=4, seed=0, signal=2.0, noise=0.5, y=None):
    """Maps whose class is a channel pattern placed at a random position of the grid, in
    Gaussian noise: the pattern is clear in the map and faint after average pooling."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).normal(size=(classes, channels)) * signal
    y = rng.permutation(np.arange(n) % classes) if y is None else y
    x = rng.normal(size=(n, channels, size * size)) * noise
    pos = rng.integers(0, size * size, n)
    x[np.arange(n), :, pos] += protos[y]
    return x.reshape(n, channels, size, size).astype(np.float32), y


def gaussian_classes(n, classes=5, dim=32, seed=0, sep=1.0):
    """Overlapping Gaussian classes (a linear problem that is not separable)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(classes, dim)) * sep / np.sqrt(dim) * 3
    y = rng.permutation(np.arange(n) % classes)
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def write(path, features, labels, **attrs):
    base = {"model": "toy", "pool": "avg4", "split": "train", "add_noise": True, "ensemble": 1}
    write_features(path, features, labels=labels, attrs={**base, **attrs})
    return str(path)


def blob_files(tmp_path, n_train=400, n_test=200, keys=((100, "mid"),), seed=0, pooled=False,
               **kw):
    """Train/test files with the spatial-blob problem under each key (different noise per
    key); ``pooled`` stores the average-pooled vectors instead of maps."""
    feats = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1000)):
        f, y = {}, None
        for i, k in enumerate(keys):
            x, y = spatial_blobs(n, seed=s * 10 + i, y=y, **kw)
            f[k] = x.mean(axis=(2, 3)) if pooled else x
        feats[split] = (f, y)
    pool = "mean" if pooled else "avg4"
    return (write(tmp_path / "train.h5", *feats["train"], pool=pool, split="train"),
            write(tmp_path / "test.h5", *feats["test"], pool=pool, split="test"))
