"""CKA estimators against the published formulas (plain numpy, written here), invariances,
torch-cka, and the degenerate cases."""
import warnings

import numpy as np
import pytest
import torch

from probe.measures import cka, cka_matrix
from probe.errors import ProbeError
from probe.store import write_features
from tolerances import (CKA_MINIBATCH_3000, CKA_SAMPLE_200, CKA_SAMPLE_3000, approx, approx_f32,
                        approx_f64, assert_close, assert_close_f32, assert_close_f64, torch_cka)

pytestmark = pytest.mark.numerics  # every test here checks numbers against an oracle


# -- the published formulas, in plain numpy --------------------------------------------

def _flat(x):
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def gram_linear(x):
    x = _flat(x)
    return x @ x.T


def gram_rbf(x, frac):
    """exp(-|xi - xj|^2 / (2 sigma^2)), sigma = frac * median distance over pairs i < j."""
    x = _flat(x)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    sigma = frac * np.median(d[np.triu_indices(len(x), 1)])
    return np.exp(-d ** 2 / (2 * sigma ** 2))


def hsic_biased(k, l):
    """Gretton et al. 2005 / Kornblith et al. 2019 eq. 3: tr(KHLH) / (n-1)^2."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def hsic_unbiased(k, l):
    """Song et al. 2012 eq. 5 (Nguyen et al. 2021 eq. 3)."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def np_cka(x, y, kernel="linear", unbiased=False, sigma=1.0, batches=None):
    """CKA; with ``batches`` (lists of row indices) the minibatch form: HSICs summed over
    batches, weighted by batch size, before normalising."""
    gram = gram_linear if kernel == "linear" else (lambda a: gram_rbf(a, sigma))
    hsic = hsic_unbiased if unbiased else hsic_biased
    batches = batches or [np.arange(len(x))]
    kl = kk = ll = 0.0
    for b in batches:
        k, l = gram(np.asarray(x)[b]), gram(np.asarray(y)[b])
        kl += len(b) * hsic(k, l)
        kk += len(b) * hsic(k, k)
        ll += len(b) * hsic(l, l)
    return kl / np.sqrt(kk * ll)


def related(rng, n, d=24, noise=1.0, offset=2.0):
    """Two representations sharing a latent, with non-zero means (as real features have)."""
    z = rng.standard_normal((n, 8))
    x = z @ rng.standard_normal((8, d)) + noise * rng.standard_normal((n, d)) + offset
    y = np.tanh(z @ rng.standard_normal((8, d + 5))) + noise * rng.standard_normal((n, d + 5)) - offset
    return x.astype(np.float32), y.astype(np.float32)


ESTIMATORS = [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]


# -- against the formulas ----------------------------------------------------------------

@pytest.mark.parametrize("kernel,unbiased", ESTIMATORS)
def test_matches_numpy_formulas(kernel, unbiased):
    rng = np.random.default_rng(0)
    x, y = related(rng, 60)
    spatial = (x[:, :12] * 3).reshape(60, 3, 2, 2)  # (N, C, H, W) maps are flattened
    reps = [x, y, spatial]
    got = cka_matrix(reps, kernel=kernel, unbiased=unbiased, sigma=0.8)
    want = np.array([[np_cka(a, b, kernel, unbiased, 0.8) for b in reps] for a in reps])
    # CKA is at most 1; its float32 Grams sum up to 29 products per entry
    assert_close_f32(got, want, n=29, scale=1)
    assert abs(want[0, 1]) > 0.05  # the pairs are not trivially 0 or 1


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_minibatch_matches_numpy_formula(kernel):
    rng = np.random.default_rng(1)
    x, y = related(rng, 70)
    # batches of 16 in file order; the last one (6 rows) stays a batch of its own
    got = cka_matrix([x], [y], minibatch=16, shuffle=False, kernel=kernel)[0, 0]
    batches = [np.arange(i, min(i + 16, 70)) for i in range(0, 70, 16)]
    assert got == approx_f32(np_cka(x, y, kernel, True, batches=batches), n=29, scale=1)


def test_tiny_last_batch_joins_the_previous_one():
    rng = np.random.default_rng(2)
    x, y = related(rng, 34)
    got = cka_matrix([x], [y], minibatch=16, shuffle=False)[0, 0]
    # 34 = 16 + 18: a batch of 2 cannot carry an unbiased HSIC
    want = np_cka(x, y, unbiased=True, batches=[np.arange(16), np.arange(16, 34)])
    assert got == approx_f32(want, n=29, scale=1)


def test_feature_space_identity():
    """Linear CKA also equals ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred
    features (Kornblith et al. 2019, eq. 7) -- no Gram matrices at all."""
    rng = np.random.default_rng(3)
    x, y = related(rng, 80)
    xc, yc = _flat(x) - _flat(x).mean(0), _flat(y) - _flat(y).mean(0)
    want = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert cka_matrix([x], [y])[0, 0] == approx_f32(want, n=29, scale=1)


# -- properties ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,unbiased", ESTIMATORS)
def test_self_similarity_is_one(kernel, unbiased):
    x, y = related(np.random.default_rng(4), 50)
    m = cka_matrix([x, y], kernel=kernel, unbiased=unbiased)
    # the HSICs are float64 sums over the 50 x 50 kernel entries
    assert_close_f64(np.diag(m), 1.0, n=50 * 50, scale=1)
    assert_close_f64(m, m.T, n=50 * 50, scale=1)


@pytest.mark.parametrize("kernel,unbiased", ESTIMATORS)
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(kernel, unbiased):
    rng = np.random.default_rng(5)
    x, y = related(rng, 64)
    q, _ = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))
    moved = (7.5 * x.astype(np.float64) @ q).astype(np.float32)
    m = cka_matrix([x, moved], [x, y], kernel=kernel, unbiased=unbiased)
    assert m[1, 0] == approx_f32(1.0, n=29, scale=1)  # CKA(x, 7.5 x Q) = 1
    assert m[1, 1] == approx_f32(m[0, 1], n=29, scale=1)  # and nothing else changes


def test_sensitive_to_non_isotropic_scaling():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 10)).astype(np.float32)
    stretched = x * np.array([30] + [1] * 9, dtype=np.float32)
    # white x: CKA(x, x S) = ||S||_F^2 / (||I||_F ||S^2||_F) = 909 / sqrt(10 (900^2 + 9))
    # in the population; the sample estimate is close to it
    got = cka_matrix([x], [stretched])[0, 0]
    assert got < 0.5
    assert got == approx(909 / np.sqrt(10 * (900 ** 2 + 9)), CKA_SAMPLE_200, scale=1)


# -- minibatch against full batch ---------------------------------------------------------

def test_minibatch_equals_full_batch_on_repeated_batches():
    """Each batch is the same samples shuffled, so every per-batch unbiased HSIC equals the
    full-batch unbiased HSIC of those samples: the two estimators must agree exactly."""
    rng = np.random.default_rng(7)
    x, y = related(rng, 48)
    perms = [rng.permutation(48) for _ in range(4)]
    xs, ys = np.concatenate([x[p] for p in perms]), np.concatenate([y[p] for p in perms])
    # float64 products: only the estimator's arithmetic can make them differ
    mini = cka_matrix([xs], [ys], minibatch=48, shuffle=False, dtype="float64")[0, 0]
    full = cka_matrix([x], [y], unbiased=True, dtype="float64")[0, 0]
    assert mini == approx_f64(full, n=48 * 48, scale=1)  # float64 sums over 48 x 48 entries


def test_minibatch_and_full_batch_agree_with_population_value():
    """Gaussian x (identity covariance) and y = x W + noise have population linear CKA
    ||W||_F^2 / (sqrt(d) ||W^T W + s^2 I||_F); both estimators must be near it."""
    rng = np.random.default_rng(8)
    n, d, s = 3000, 6, 1.0
    w = rng.standard_normal((d, d))
    x = rng.standard_normal((n, d))
    y = x @ w + s * rng.standard_normal((n, d))
    truth = np.linalg.norm(w) ** 2 / (np.sqrt(d) * np.linalg.norm(w.T @ w + s ** 2 * np.eye(d)))
    full = cka_matrix([x], [y], unbiased=True)[0, 0]
    mini = cka_matrix([x], [y], minibatch=500)[0, 0]
    assert full == approx(truth, CKA_SAMPLE_3000, scale=1)
    assert mini == approx(truth, CKA_SAMPLE_3000, scale=1)
    assert mini == approx(full, CKA_MINIBATCH_3000, scale=1)


# -- torch-cka ----------------------------------------------------------------------------

class _Layers(torch.nn.Module):
    """Takes the keys' features concatenated and passes each slice through its own
    nn.Identity, so torch-cka's hooks on 'layers.i' see exactly the stored features."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes = sizes
        self.layers = torch.nn.ModuleList(torch.nn.Identity() for _ in sizes)

    def forward(self, x):
        for layer, part in zip(self.layers, x.split(self.sizes, dim=1)):
            layer(part)


def torch_cka_matrix(xs, ys, batch_size):
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA

    def model_and_loader(reps):
        flat = [torch.as_tensor(r).reshape(len(r), -1).float() for r in reps]
        loader = DataLoader(TensorDataset(torch.cat(flat, 1)), batch_size=batch_size)
        return _Layers([f.shape[1] for f in flat]), loader, [f"layers.{i}" for i in range(len(flat))]

    m1, l1, n1 = model_and_loader(xs)
    m2, l2, n2 = model_and_loader(ys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = CKA(m1, m2, "a", "b", n1, n2)
        c.compare(l1, l2)
    return c.export()["CKA"].double().numpy()


@pytest.fixture
def two_files(tmp_path):
    """Two feature files over the same 96 samples, the second in another order."""
    rng = np.random.default_rng(9)
    n = 96
    x, y = related(rng, n, d=20)
    a = {(10, "enc"): x, (10, "mid"): np.tanh(x[:, :16]).reshape(n, 4, 2, 2),
         (50, "enc"): x + rng.standard_normal(x.shape).astype(np.float32),
         (50, "mid"): y[:, :12].reshape(n, 3, 2, 2)}
    b = {(0, "layer1"): y, (0, "layer2"): np.maximum(y @ rng.standard_normal((25, 9)), 0)}
    ids = [f"img{i:03d}.png" for i in range(n)]
    perm = rng.permutation(n)
    pa = write_features(tmp_path / "a.h5", a, labels=np.arange(n) % 3, ids=ids)
    pb = write_features(tmp_path / "b.h5", {k: v[perm] for k, v in b.items()},
                        labels=(np.arange(n) % 3)[perm], ids=[ids[i] for i in perm])
    return pa, pb, a, b


def test_within_a_file_matches_torch_cka(two_files):
    pa, _, a, _ = two_files
    reps = list(a.values())
    got = cka(pa, minibatch=32, shuffle=False)
    assert got.rows == list(a)  # forward order: t ascending, blocks as written
    assert_close(got.matrix, torch_cka_matrix(reps, reps, 32), torch_cka(32, 25), scale=1)


def test_between_files_matches_torch_cka_on_aligned_samples(two_files):
    pa, pb, a, b = two_files
    got = cka(pa, pb, minibatch=48, shuffle=False)
    # torch-cka is given b's rows in a's order: what pairing by id must reproduce
    want = torch_cka_matrix(list(a.values()), list(b.values()), 48)
    assert_close(got.matrix, want, torch_cka(48, 25), scale=1)


# -- degenerate inputs --------------------------------------------------------------------

@pytest.mark.parametrize("kernel,unbiased", ESTIMATORS)
def test_constant_features_give_zero_not_nan(kernel, unbiased):
    rng = np.random.default_rng(10)
    x, y = related(rng, 40)
    constant = np.full((40, 7), 3.25, dtype=np.float32)
    zeros = np.zeros((40, 2, 2, 2), dtype=np.float32)
    m = cka_matrix([x, constant, zeros, y], kernel=kernel, unbiased=unbiased)
    assert np.isfinite(m).all()
    assert (m[[1, 2], :] == 0).all() and (m[:, [1, 2]] == 0).all()
    assert m[0, 3] == approx_f32(np_cka(x, y, kernel, unbiased), n=29, scale=1)


def test_batch_where_features_are_constant():
    """Features constant within one batch (not overall): that batch's HSICs are 0, as the
    formula says, and the result is finite."""
    rng = np.random.default_rng(11)
    x, y = related(rng, 40)
    x[:20] = 1.5
    got = cka_matrix([x], [y], minibatch=20, shuffle=False)[0, 0]
    want = np_cka(x, y, unbiased=True, batches=[np.arange(20), np.arange(20, 40)])
    assert np.isfinite(got) and got == approx_f32(want, n=29, scale=1)


def test_rbf_with_mostly_identical_samples_is_finite():
    rng = np.random.default_rng(12)
    x = np.zeros((30, 5), dtype=np.float32)
    x[:5] = rng.standard_normal((5, 5))  # median distance 0: no bandwidth
    y = rng.standard_normal((30, 4)).astype(np.float32)
    m = cka_matrix([x, y], kernel="rbf")
    assert np.isfinite(m).all() and m[0, 1] == 0


def test_constant_key_in_a_file_warns_and_is_listed(tmp_path):
    rng = np.random.default_rng(13)
    x, _ = related(rng, 20)
    path = write_features(tmp_path / "c.h5", {(1, "live"): x, (1, "dead"): np.ones((20, 3))},
                          labels=np.zeros(20, int))
    with pytest.warns(UserWarning, match="t1/dead"):
        r = cka(path)
    assert r.constant_keys == ["t1/dead"]
    assert np.isfinite(r.matrix).all() and r.value("t1/dead", "t1/live") == 0


@pytest.mark.parametrize("n,minibatch,unbiased,match", [
    (3, None, True, "at least 4 samples"),
    (1, None, False, "at least 2 samples"),
    (20, 3, True, "minibatch 3 is too small"),
    (20, 0, True, "positive number"),
])
def test_too_few_samples_is_a_clear_error(n, minibatch, unbiased, match):
    x = np.random.default_rng(14).standard_normal((n, 4))
    with pytest.raises(ProbeError, match=match):
        cka_matrix([x], minibatch=minibatch, unbiased=unbiased)


def test_smallest_batches_are_finite():
    rng = np.random.default_rng(15)
    x, y = related(rng, 4)
    assert np.isfinite(cka_matrix([x], [y], unbiased=True)).all()
    assert np.isfinite(cka_matrix([x[:2]], [y[:2]])).all()
    assert cka_matrix([x], [y], unbiased=True)[0, 0] == approx_f32(
        np_cka(x, y, unbiased=True), n=29, scale=1)


def test_float64_product_agrees_with_float32():
    x, y = related(np.random.default_rng(16), 50, offset=50.0)  # large mean: centring matters
    a = cka_matrix([x, y], dtype="float32")
    b = cka_matrix([x, y], dtype="float64")
    assert_close_f32(a, b, n=29, scale=1)
    # the numpy formula centres Grams of features whose mean is ~50 times their spread: it
    # cancels ~50**2 of the entries' magnitude
    assert b[0, 1] == approx_f64(np_cka(x, y), n=50 * 50, scale=50 ** 2)


def test_torch_tensors_are_accepted():
    x, y = related(np.random.default_rng(17), 40)
    got = cka_matrix(torch.from_numpy(x), [torch.from_numpy(y)], minibatch=16)
    assert got.shape == (1, 1)
    assert got[0, 0] == approx_f64(cka_matrix(x, [y], minibatch=16)[0, 0], n=40 * 40, scale=1)
