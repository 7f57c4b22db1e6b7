"""`probe.measures.similarity` against the published formulas (plain numpy and scipy, written
here, on another code path), rsatoolbox, the invariances each measure has, and its
permutation null and bootstrap against the same draws recomputed here."""
import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr, spearmanr

from measures.test_cka_core import hsic_unbiased, np_cka
from probe.errors import ProbeError
from probe.measures import METRICS, cka, similarity
from probe.measures.pairs import draws
from probe.store import open_features, write_features
from tolerances import (CKNNA_ASYMMETRY, NULL_MEAN_300, SKLEARN_CCA, approx, approx_f64,
                        assert_close, assert_close_f32, assert_close_f64)

N = 40
KEYS = ["t1/x", "t1/y", "t1/z"]


# -- the published formulas ---------------------------------------------------------------

def flat(x):
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def neighbour_sets(x, k, idx=None):
    """Each sample's k nearest others by cosine similarity (Huh et al. 2024), by sorting.
    With bootstrap rows ``idx``, copies of one sample are not each other's neighbours, and
    ties between copies go to the first."""
    x = flat(x)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    idx = np.arange(len(x)) if idx is None else idx
    sim, n = (x @ x.T)[np.ix_(idx, idx)], len(idx)
    sets = [set(sorted((j for j in range(n) if idx[j] != idx[i]), key=lambda j: -sim[i, j])[:k])
            for i in range(n)]
    return sets, sim


def ref_mutual_knn(x, y, k, idx=None):
    a, b = neighbour_sets(x, k, idx)[0], neighbour_sets(y, k, idx)[0]
    return sum(len(p & q) for p, q in zip(a, b)) / (len(a) * k)


def ref_cknna(x, y, k, idx=None):
    """Huh et al.: unbiased HSIC (Song et al. eq. 5) of the kernels masked to mutual neighbours."""
    (a, K), (b, L) = neighbour_sets(x, k, idx), neighbour_sets(y, k, idx)

    def mask(*sides):
        m = np.zeros_like(K)
        for i in range(len(m)):
            m[i, list(set.intersection(*(s[i] for s in sides)))] = 1
        return m

    m, ma, mb = mask(a, b), mask(a), mask(b)
    return hsic_unbiased(m * K, m * L) / np.sqrt(hsic_unbiased(ma * K, ma * K) * hsic_unbiased(mb * L, mb * L))


def ref_rsa(x, y, corr="spearman", rdm="correlation", idx=None):
    """Correlation of the RDMs' upper triangles (pairs of two different samples)."""
    rdms = [1 - np.corrcoef(flat(v)) if rdm == "correlation" else squareform(pdist(flat(v)))
            for v in (x, y)]
    rdms = [(r + r.T) / 2 for r in rdms]  # a pair drawn twice, either way round, must tie
    i, j = np.triu_indices(len(rdms[0]), 1)
    if idx is not None:
        i, j = np.triu_indices(len(idx), 1)
        i, j = idx[i[idx[i] != idx[j]]], idx[j[idx[i] != idx[j]]]
    test = spearmanr if corr == "spearman" else pearsonr
    return test(rdms[0][i, j], rdms[1][i, j])[0]


def ref_procrustes(x, y):
    """Ding et al. 2021: min over orthogonal R of ||X - Y R||_F^2, each centred and of unit
    Frobenius norm (scipy's solver; the narrower side padded with zero columns)."""
    x, y = (flat(v) - flat(v).mean(0) for v in (x, y))
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    p = max(x.shape[1], y.shape[1])
    x, y = (np.pad(v, ((0, 0), (0, p - v.shape[1]))) for v in (x, y))
    r, _ = scipy.linalg.orthogonal_procrustes(y, x)
    return np.sum((x - y @ r) ** 2)


def svd_reduce(x, keep=0.99):
    """Raghu et al. 2017: the projections on the top singular directions that explain 99 %
    of the variance."""
    x = flat(x) - flat(x).mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    share = np.cumsum(s ** 2) / np.sum(s ** 2)
    kept = next(i + 1 for i, c in enumerate(share) if c >= keep)
    return x @ vt[:kept].T


def ref_svcca(x, y):
    """Mean canonical correlation of the reduced representations, by whitening."""
    a, b = svd_reduce(x), svd_reduce(y)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w ** -0.5) @ v.T

    return np.linalg.svd(inv_sqrt(a.T @ a) @ a.T @ b @ inv_sqrt(b.T @ b), compute_uv=False).mean()


def unbiased_cka_of_resample(x, y, idx):
    """The unbiased HSIC leaves out the pairs (i, i), and so the pairs of two copies of a
    sample (kernels centred on all samples)."""
    same = idx[:, None] == idx[None, :]
    k, l = ((flat(v) - flat(v).mean(0)) @ (flat(v) - flat(v).mean(0)).T for v in (x, y))
    k, l = (np.where(same, 0, m[np.ix_(idx, idx)]) for m in (k, l))
    return hsic_unbiased(k, l) / np.sqrt(hsic_unbiased(k, k) * hsic_unbiased(l, l))


def reference(metric, x, y, idx=None):
    """The measure by the formulas above; ``idx``: a bootstrap resample's rows."""
    if metric == "cka-unbiased" and idx is not None:
        return unbiased_cka_of_resample(x, y, idx)
    if metric in ("mutual-knn", "cknna", "rsa"):  # they pick the pairs of the resample
        return {"mutual-knn": lambda: ref_mutual_knn(x, y, 5, idx),
                "cknna": lambda: ref_cknna(x, y, 5, idx),
                "rsa": lambda: ref_rsa(x, y, idx=idx)}[metric]()
    if idx is not None:
        x, y = flat(x)[idx], flat(y)[idx]
    if metric.startswith("cka"):
        return np_cka(x, y, "rbf" if metric == "cka-rbf" else "linear", metric == "cka-unbiased")
    return ref_procrustes(x, y) if metric == "procrustes" else ref_svcca(x, y)


# -- data ---------------------------------------------------------------------------------

def representations(rng, n=N):
    """x and y share a latent (y: a spatial map with more features than samples); z is
    unrelated."""
    lat = rng.standard_normal((n, 4))
    x = lat @ rng.standard_normal((4, 12)) + 0.5 * rng.standard_normal((n, 12)) + 1.0
    y = np.tanh(lat @ rng.standard_normal((4, 60))) + 0.3 * rng.standard_normal((n, 60))
    z = rng.standard_normal((n, 8))
    return {"t1/x": x, "t1/y": y.reshape(n, 3, 4, 5), "t1/z": z}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    feats = representations(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("sim") / "f.h5"
    write_features(path, feats, labels=np.zeros(N, int), ids=[f"s{i}" for i in range(N)],
                   dtype=np.float64)
    return str(path), feats


# -- each measure against its formula ----------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.numerics
def test_matches_the_published_formula(data, metric):
    path, feats = data
    got = similarity(path, metric=metric, k=5)
    want = [[reference(metric, feats[r], feats[c]) for c in KEYS] for r in KEYS]
    # float64 throughout, sums over N x N pairs; the measures are of order 1
    assert_close_f64(got.matrix, want, n=N * N, scale=1)
    assert got.row_labels == KEYS and got.metric == metric


@pytest.mark.numerics
def test_full_batch_cka_is_probe_cka(data):
    for metric, kw in (("cka", {}), ("cka-unbiased", {"unbiased": True}), ("cka-rbf", {"kernel": "rbf"})):
        assert_close_f32(similarity(data[0], metric=metric).matrix,  # float32 Grams: 60 products
                         cka(data[0], **kw).matrix, n=60, scale=1)


@pytest.mark.parametrize("corr", ["spearman", "pearson"])
@pytest.mark.parametrize("rdm", ["correlation", "euclidean"])
@pytest.mark.numerics
def test_rsa_matches_rsatoolbox(data, corr, rdm):
    rsatoolbox = pytest.importorskip("rsatoolbox")
    path, feats = data
    got = similarity(path, metric="rsa", rsa_corr=corr, rdm=rdm, keys="t1/x", keys_b="t1/y")
    rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(flat(feats[k])), method=rdm)
            for k in ("t1/x", "t1/y")]
    if rdm == "euclidean":  # rsatoolbox's is the squared distance over the features
        for r, k in zip(rdms, ("t1/x", "t1/y")):
            r.dissimilarities = np.sqrt(r.dissimilarities * flat(feats[k]).shape[1])
    want = rsatoolbox.rdm.compare(*rdms, method="spearman" if corr == "spearman" else "corr")
    assert got.matrix[0, 0] == approx_f64(float(want[0, 0]), n=N * N, scale=1)


@pytest.mark.numerics
def test_svcca_matches_sklearn_cca(data):
    from sklearn.cross_decomposition import CCA

    path, feats = data
    a, b = svd_reduce(feats["t1/x"]), svd_reduce(feats["t1/z"])
    dims = min(a.shape[1], b.shape[1])
    u, v = CCA(n_components=dims, scale=False, max_iter=5000, tol=1e-12).fit_transform(a, b)
    want = np.mean([np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(dims)])
    got = similarity(path, metric="svcca", keys="t1/x", keys_b="t1/z").matrix[0, 0]
    assert got == approx(want, SKLEARN_CCA, scale=1)


# -- invariances --------------------------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.numerics
def test_self_symmetry_and_rotation(tmp_path, data, metric):
    """A representation against itself is 1 (Procrustes 0); swapping the sides changes
    nothing (CKNNA, as Huh et al. define it, nearly); a rotated and scaled copy is the same
    (RSA: with Euclidean RDMs, rotations mix the features a correlation RDM centres)."""
    path, feats = data
    got = similarity(path, metric=metric, k=5, rdm="euclidean").matrix
    same = 0.0 if metric == "procrustes" else 1.0
    assert_close_f64(np.diag(got), same, n=N * N, scale=1)
    if metric == "cknna":
        assert_close(got, got.T, CKNNA_ASYMMETRY, scale=1)
    else:
        assert_close_f64(got, got.T, n=N * N, scale=1)
    x = flat(feats["t1/y"])
    q = np.linalg.qr(np.random.default_rng(1).standard_normal((60, 60)))[0]
    moved = write_features(tmp_path / "m.h5", {"t1/y": 3.5 * x @ q}, labels=np.zeros(N, int),
                           ids=[f"s{i}" for i in range(N)], dtype=np.float64)
    r = similarity(path, moved, metric=metric, k=5, rdm="euclidean", keys="t1/y")
    assert r.matrix[0, 0] == approx_f64(same, n=N * N * 60, scale=1)  # rotated: 60 products


# -- permutation null and bootstrap, against the same draws ------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.numerics
def test_null_and_interval_match_the_formula_on_the_same_draws(data, metric):
    path, feats = data
    perms, boots = (d.numpy() for d in draws(N, 12, 6, seed=3, device="cpu"))
    got = similarity(path, metric=metric, k=5, keys="t1/x", keys_b="t1/y", permutations=12,
                     bootstrap=6, ci=0.8, seed=3)
    x, y = feats["t1/x"], flat(feats["t1/y"])
    value = reference(metric, x, y)
    null = np.array([reference(metric, x, y[p]) for p in perms])
    extreme = null <= value if metric == "procrustes" else null >= value
    assert got.null_mean[0, 0] == approx_f64(null.mean(), n=N * N, scale=1)
    assert got.p_value[0, 0] == (1 + extreme.sum()) / 13
    boot = [reference(metric, x, y, idx) for idx in boots]
    lo, hi = np.quantile(boot, [0.1, 0.9])
    if metric in ("cka", "cka-rbf", "procrustes", "svcca"):  # moved back by the bootstrap bias
        lo, hi = lo - (np.mean(boot) - value), hi - (np.mean(boot) - value)
    assert_close_f64([got.ci_low[0, 0], got.ci_high[0, 0]], [lo, hi], n=N * N, scale=1)


def permutation_mean_of_linear_cka(x, y):
    """E over permutations of CKA(X, Y[p]) = tr(Kc) tr(Lc) / ((n-1) |Kc| |Lc|), Kc, Lc the
    centred Gram matrices (both have zero row sums)."""
    k, l = (flat(v) - flat(v).mean(0) for v in (x, y))
    k, l = k @ k.T, l @ l.T
    return np.trace(k) * np.trace(l) / ((len(k) - 1) * np.linalg.norm(k) * np.linalg.norm(l))


def test_null_of_unrelated_representations_sits_at_chance(tmp_path):
    rng = np.random.default_rng(5)
    n, k = 120, 6
    x, y = rng.standard_normal((n, 20)), rng.standard_normal((n, 15))
    path = write_features(tmp_path / "r.h5", {"t1/x": x, "t1/y": y}, labels=np.zeros(n, int),
                          dtype=np.float64)
    chance = {"cka": permutation_mean_of_linear_cka(x, y), "cka-unbiased": 0.0,
              "mutual-knn": k / (n - 1), "rsa": 0.0}
    # no closed form: the measure between x and fresh independent draws like y
    fresh = [rng.standard_normal((n, 15)) for _ in range(10)]
    for metric in ("cknna", "procrustes", "svcca"):
        chance[metric] = np.mean([reference(metric, x, f) if metric != "cknna"
                                  else ref_cknna(x, f, k) for f in fresh])
    for metric, want in chance.items():
        r = similarity(path, metric=metric, k=k, keys="t1/x", keys_b="t1/y", permutations=300)
        assert r.null_mean[0, 0] == approx(want, NULL_MEAN_300, scale=abs(want) + 0.2), metric


@pytest.mark.parametrize("metric", METRICS)
def test_identical_representations_have_the_smallest_p_value(data, metric):
    r = similarity(data[0], metric=metric, k=5, keys="t1/y", permutations=49)
    assert r.p_value[0, 0] == 1 / 50


@pytest.mark.parametrize("metric", METRICS)
def test_intervals_hold_their_value(data, metric):
    """Measures over pairs of two different samples leave out pairs of copies, so a
    resample is not more alike than the data; for the others (biased CKA, Procrustes,
    SVCCA) the interval is moved back by the bootstrap estimate of the shift (docs/cka.md)."""
    r = similarity(data[0], metric=metric, k=5, keys="t1/x", keys_b="t1/y,t1/z", bootstrap=40, seed=1)
    assert np.all((r.ci_low <= r.matrix) & (r.matrix <= r.ci_high))


def test_draws_reproduce_with_a_seed_and_change_without(data):
    def run(seed):
        return similarity(data[0], metric="rsa", keys="t1/x", keys_b="t1/z", permutations=30,
                          bootstrap=10, seed=seed, subsample=30)

    a, b, c = run(1), run(1), run(2)
    for name in ("matrix", "null_mean", "p_value", "ci_low", "ci_high"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))  # same machine
    assert a.estimator["subsample"]["ids"] == b.estimator["subsample"]["ids"]
    assert a.estimator["subsample"]["ids"] != c.estimator["subsample"]["ids"]
    assert not np.array_equal(a.null_mean, c.null_mean)


@pytest.mark.numerics
def test_two_files_paired_by_id_give_the_one_file_numbers(tmp_path, data):
    """The null and the interval work across files: B stores its samples in another order."""
    path, feats = data
    order = np.random.default_rng(7).permutation(N)
    other = write_features(tmp_path / "b.h5", {"t5/w": flat(feats["t1/y"])[order]},
                           labels=np.zeros(N, int), ids=[f"s{i}" for i in order], dtype=np.float64)
    kw = dict(metric="cknna", k=5, permutations=20, bootstrap=8, seed=4)
    two = similarity(path, other, keys="t1/x", keys_b="t5/w", **kw)
    one = similarity(path, keys="t1/x", keys_b="t1/y", **kw)
    assert two.two_files and two.col_labels == ["t5/w"]
    for name in ("matrix", "null_mean", "p_value", "ci_low", "ci_high"):
        assert_close_f64(getattr(two, name), getattr(one, name), n=N * N, scale=1, what=name)


# -- size, subsets and degenerate input ---------------------------------------------------

def test_too_many_samples_refuse_or_subsample(data):
    path, feats = data
    with pytest.raises(ProbeError, match=r"rsa on 40 samples needs 40 x 40 float64 .*--subsample 30"):
        similarity(path, metric="rsa", max_samples=30)
    r = similarity(path, metric="rsa", max_samples=30, subsample=30, keys="t1/x", keys_b="t1/y")
    rows = [int(s[1:]) for s in r.estimator["subsample"]["ids"]]
    assert r.num_samples == 30 and len(set(rows)) == 30
    want = ref_rsa(feats["t1/x"][rows], flat(feats["t1/y"])[rows])
    assert r.matrix[0, 0] == approx_f64(want, n=30 * 30, scale=1)
    # Procrustes of few features needs no n x n matrix
    assert similarity(path, metric="procrustes", keys="t1/x", max_samples=30).num_samples == 40


@pytest.mark.parametrize("kw,message", [
    ({"metric": "cosine"}, "unknown metric 'cosine'"),
    ({"metric": "mutual-knn", "k": 40}, "k=40 neighbours needs at least 41 samples"),
    ({"metric": "cknna", "k": 1}, "--k must be a whole number of at least 2"),
    ({"subsample": 50}, "--subsample 50 is more than the 40 samples"),
    ({"permutations": -1}, "--permutations must be a whole number"),
    ({"ci": 95}, "--ci is the interval's coverage"),
    ({"metric": "rsa", "rdm": "cosine"}, "unknown --rdm 'cosine'"),
])
def test_bad_settings_are_one_line_errors(data, kw, message):
    with pytest.raises(ProbeError, match=message):
        similarity(data[0], **kw)


def test_constant_features_are_no_similarity(tmp_path):
    rng = np.random.default_rng(8)
    path = write_features(tmp_path / "c.h5", {"t1/x": rng.standard_normal((20, 6)),
                                              "t1/c": np.full((20, 6), 3.0)},
                          labels=np.zeros(20, int), dtype=np.float64)
    for metric, none in (("procrustes", 2.0), ("mutual-knn", 0.0), ("rsa", 0.0), ("svcca", 0.0)):
        with pytest.warns(UserWarning, match="t1/c do not vary"):
            r = similarity(path, metric=metric, k=3)
        assert r.matrix[0, 1] == r.matrix[1, 1] == none and r.constant_keys == ["t1/c"]


def test_result_records_the_metric_and_its_uncertainty(data, tmp_path):
    import csv
    import json

    r = similarity(data[0], metric="procrustes", keys="t1/x", keys_b="t1/y,t1/z",
                   permutations=9, bootstrap=5)
    js = json.loads(open(r.to_json(tmp_path / "r.json")).read())
    assert js["metric"] == "procrustes" and js["distance"] is True
    assert js["uncertainty"]["permutations"] == 9 and "<=" in js["uncertainty"]["p_value"]
    # written exactly (shortest round-trip decimal)
    assert np.array_equal(js["p_value"], r.p_value) and np.array_equal(js["ci_low"], r.ci_low)
    rows = list(csv.reader(open(r.to_stats_csv(tmp_path / "s.csv"))))
    assert rows[0] == ["row", "col", "value", "null_mean", "p_value", "ci_low", "ci_high"]
    assert rows[2][:2] == ["t1/x", "t1/z"] and float(rows[2][4]) == r.p_value[0, 1]
    with open_features(data[0]) as f:
        assert r.num_samples == len(f)
