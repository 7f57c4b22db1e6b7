import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from probe.data import load_dataset
from probe.errors import ProbeError
from probe.extractors.ldae.extractor import patchify, unpatchify
from probe.train.pca import fit_pca, fit_patch_pca, sample_patches
from tolerances import assert_close_f64


def numpy_patches(images, p):
    """All non-overlapping p x p patches, each flattened channel-major, with numpy slicing."""
    images = np.asarray(images)
    n, c, h, w = images.shape
    out = [images[k, :, i:i + p, j:j + p].reshape(-1)
           for k in range(n) for i in range(0, h, p) for j in range(0, w, p)]
    return np.stack(out).reshape(n, (h // p) * (w // p), c * p * p)


def test_patchify_matches_numpy_slicing_and_inverts():
    x = torch.randn(3, 2, 8, 12)
    tokens = patchify(x, 4)
    np.testing.assert_array_equal(tokens.numpy(), numpy_patches(x.numpy(), 4))  # copies
    assert torch.equal(unpatchify(tokens, 4, 2, 8, 12), x)


def test_sampled_patches_are_grid_patches_of_the_images():
    images = torch.arange(20 * 2 * 8 * 8, dtype=torch.float32).reshape(20, 2, 8, 8)
    patches = sample_patches(images, 4, 300, seed=1, chunk=7).numpy()
    grid = {tuple(row) for row in numpy_patches(images.numpy(), 4).reshape(-1, 32)}
    assert patches.shape == (300, 32)
    assert all(tuple(row) in grid for row in patches)
    assert len({tuple(r) for r in patches}) > 40  # many distinct images and positions
    again = sample_patches(images, 4, 300, seed=1, chunk=1000).numpy()
    np.testing.assert_array_equal(again, patches)  # chunking does not change the draw (copies)


@pytest.mark.numerics
def test_pca_basis_is_orthonormal_and_matches_sklearn_on_demo_patches():
    data = load_dataset("demo", "train", 16, 1)
    images = torch.stack([data[i][0] for i in range(200)]) * 2 - 1
    patches = sample_patches(images, 4, 4000, seed=0)
    mean, comps, var = fit_pca(patches)
    # float64 throughout: an eigensolver's vectors are orthonormal to O(d eps), d = 16
    assert_close_f64(comps @ comps.T, np.eye(16), n=16 * 16)
    ref = PCA(svd_solver="full").fit(patches.numpy())
    assert_close_f64(mean, ref.mean_, n=4000)
    assert_close_f64(var, ref.explained_variance_, n=4000 * 16)  # from sums of 4000 x 16
    assert np.all(np.diff(var.numpy()) <= 0)  # sorted: rounding is monotone
    # The same components up to sign (the eigenvalues of real patches are distinct): each
    # vector is determined to eps |C| / (gap to the next eigenvalue) (Davis-Kahan)
    dots = np.abs(np.sum(comps.numpy() * ref.components_, axis=1))
    gap = np.abs(np.diff(var.numpy())).min()
    assert_close_f64(dots, 1, n=16 * 16, scale=var.numpy().max() / gap)


@pytest.mark.numerics
def test_fit_patch_pca_applies_the_transform_before_sampling():
    images = torch.rand(10, 1, 8, 8)
    a = fit_patch_pca(images, 4, 500, seed=3, transform=lambda x: x * 2 - 1)
    b = fit_patch_pca(images * 2 - 1, 4, 500, seed=3)
    for u, v in zip(a, b):
        assert_close_f64(u, v, n=500 * 16)  # float64 PCA of the same patches


def test_too_few_patches_is_a_user_error():
    with pytest.raises(ProbeError, match="at least 2 patches"):
        fit_pca(torch.zeros(1, 4))
