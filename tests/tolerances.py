"""Every float tolerance of the test suite, in one place, each with the reason it is what it is.

Float arithmetic is exact only up to rounding: float32 keeps 24 significant bits (EPS32 =
2**-23 is the gap between 1.0 and the next float32), float64 keeps 53 (EPS64 = 2**-52).
Two correct computations of one quantity -- on another CPU (AVX2, AVX-512/AMX, the scalar
kernels of ATEN_CPU_CAPABILITY=default), with another thread count or batch shape, or in
another library -- add in another order, so they differ by a few roundings of the *largest*
values involved, not of each element: a value near zero that comes out of cancelling large
terms keeps an absolute error at the scale of those terms.  So every comparison here is

    |actual - expected| <= rel * scale    elementwise, with scale = max|expected|

unless a call says otherwise, and rel comes from the arithmetic:

* ``f32(n)``/``f64(n)``: C * EPS * sqrt(n) for a result that is a sum of n terms (or n
  roundings in a row).  Rounding errors of a sum are independent and of either sign, so they
  grow like sqrt(n), not n (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1);
  C = 8 covers the spread of that random walk and the few roundings around the sum.
* ``NETWORK``: a whole network's block output against another implementation or kernel path.
* named constants below for what is not rounding at all (stopping rules, sampling error,
  low precision); each says where its size comes from.

Bit identity (``torch.equal``, ``assert_array_equal``, ``atol=0``) stays only where the code
guarantees it: the same machine running the same kernels on the same shapes -- a rerun, a
resume after SIGKILL, ranks against one process, a copy of weights.  Those places say so.

Set PROBE_TOL_LOG=FILE to append, per comparison, how much of its tolerance it used (how the
margins quoted below were measured, under AVX-512, AVX2 and ATEN_CPU_CAPABILITY=default).
"""
import math
import os

import numpy as np
import pytest

EPS32 = 2.0 ** -23  # float32 machine epsilon, ~1.19e-7
EPS64 = 2.0 ** -52  # float64 machine epsilon, ~2.2e-16
# Headroom over sqrt(n) EPS: one sum's rounding error has a standard deviation of about
# 0.3 sqrt(n) EPS of its terms' scale; 8 covers that many times over, and the roundings of
# the inputs and of the few operations around the sum.
C = 8.0

# A network's block outputs against another implementation of the same network (the
# original ADM/DiT code, diffusers, timm, a fixture written earlier) or another kernel
# path: every layer sums hundreds of products, normalises and adds a residual, and the
# errors of all layers before a block reach it.  Measured worst case over the reference
# fixtures and shipped models under AVX-512, AVX2 and default kernels, 1 and 2 threads:
# ~10 EPS32 (1.2e-6) of the block's largest value; 1e-5 (84 EPS32) leaves 8x headroom and
# still fails on any real change (a wrong weight or a skipped op moves values by 1e-2+).
NETWORK = 1e-5

# bf16 autocast or bfloat16 weights against float32: bfloat16 keeps 8 significant bits
# (eps 2**-7 = 7.8e-3); after a few layers the tiny SD U-Net's output is off by 1.3e-2 of
# its largest value.
BF16_NETWORK = 0.1

# Storing float16 rounds each value to the nearest float16: half an ulp, 2**-11 of the value
# (above float16's smallest normal, 6e-5; below it a NETWORK-sized floor covers the gap).
HALF_ULP16 = 2.0 ** -11

# L-BFGS stopped by its tolerance is not the exact optimum: ours (float64, tol 1e-9) and
# scikit-learn's lbfgs (tol 1e-10), or ours solved two ways, reach weights that agree to
# ~1e-6 of the largest weight; 1e-5 of it is the stopping rule's scale.
LBFGS_WEIGHTS = 1e-5
# ...and the probabilities (at most 1) the exported float32 head gives with those weights:
# the features' mean (50) dwarfs their spread, so float32 standardisation adds ~1e-6.
LBFGS_PROBA = 1e-5
# Validation losses at two solvers' stopping points (ours at tol 1e-6, scikit-learn's at
# 1e-8): the stopping rule again, on a loss of order 1.
LBFGS_LOSS = 1e-4
# `probe fit` as users run it -- float32, stopped at its default tolerance 1e-5 -- against
# scikit-learn run to convergence: probabilities differ by 1.9e-3 (the same under AVX-512,
# AVX2 and default kernels: it is where the solver stops, not rounding); 4e-3 leaves 2x.
# A test sample near a class boundary may fall on the other side (2 of 500 = 0.004).
LBFGS_F32_PROBA = 4e-3
LBFGS_F32_TOP1 = 0.004
# Heads trained for a few epochs of SGD with other float32 roundings (a stacked matmul
# against one per key; identical on the machines measured, but not guaranteed): each step's
# rounding (~EPS32 of the update) is carried by the later steps, some hundreds of them.
SGD_REROUNDED = 1e-5
# Linear CKA of 200 white samples against its population value: sampling error, over
# seeds 0-9 at most 0.06 (0.027 at the seed the test uses).
CKA_SAMPLE_200 = 0.05
# Unbiased CKA of 3,000 samples against its population value: sampling error ~0.01, over
# seeds 0-9 at most 0.016.
CKA_SAMPLE_3000 = 0.03
# Minibatch (500) against full-batch unbiased CKA on the same 3,000 samples: the estimators
# see the same data, so they agree far better than either with the population (at most
# 0.0013 over seeds 0-9).
CKA_MINIBATCH_3000 = 0.005
# CKNNA's mask of mutual neighbours is not symmetric (i among j's k nearest, not j among
# i's), so CKNNA(x, y) and CKNNA(y, x) differ a little by definition: 1.3e-3 on the test's data.
CKNNA_ASYMMETRY = 5e-3
# scikit-learn's CCA is iterative (NIPALS, stopped at tol=1e-12): its canonical correlations
# agree with the closed form to 2e-13 measured; 1e-6 leaves room for other versions.
SKLEARN_CCA = 1e-6
# A permutation null's mean over 300 shuffles against its expectation: Monte Carlo error,
# a few hundredths of the null's spread; 5 % of the value plus 0.01 (scale |value| + 0.2).
NULL_MEAN_300 = 0.05
# Two resamplers of one image -- PIL's bicubic against torch's antialiased bicubic -- are
# not the same filter: mean absolute difference on Fashion-MNIST's sharp edges (28 -> 20 px,
# in [0, 1]) measured 6e-4, and on a photo (400 x 300 -> 256 -> crop 224, in [-1, 1])
# 1e-3: the bounds leave 10x and more.
RESIZE_SHARP = 6 / 255
RESIZE_PHOTO = 0.01
# JPEG (8 x 8 DCT, chroma subsampling) keeps a solid colour within a few of 255 levels
# (at most 2 measured over the fine-grained fixtures), and a resize or crop of a solid
# colour changes nothing more: 0.03 is ~8 levels.
JPEG_SOLID_COLOUR = 0.03


def f32(n: float = 1) -> float:
    """Relative tolerance of a float32 result that sums n terms (or chains n roundings)."""
    return C * EPS32 * math.sqrt(max(n, 1))


def torch_cka(batch: int, d: int) -> float:
    """torch-cka computes the unbiased HSIC in float32: each Gram entry sums d products, each
    HSIC sums batch**2 of them, and the unbiased form subtracts terms of similar size."""
    return f32(batch * batch * d)


def f64(n: float = 1) -> float:
    """Relative tolerance of a float64 result that sums n terms (or chains n roundings)."""
    return C * EPS64 * math.sqrt(max(n, 1))


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch, in any dtype
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _log(rel: float, used: float, what: str) -> None:
    path = os.environ.get("PROBE_TOL_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(path, "a") as fh:
            fh.write(f"{used:.4f}\t{rel:.3g}\t{test}\t{what}\n")


def assert_close(actual, expected, rel: float, *, scale=None, what: str = "") -> None:
    """|actual - expected| <= rel * scale elementwise; scale defaults to max|expected|
    (pass scale=abs(expected) for an elementwise relative check).

    NaNs must sit at the same places; an expected scalar is compared with every element."""
    a, b = _array(actual), _array(expected)
    if b.ndim and a.shape != b.shape:
        raise AssertionError(f"{what}: shape {a.shape} != expected {b.shape}")
    a, b = np.broadcast_arrays(a, b)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        raise AssertionError(f"{what}: NaN in one but not the other at "
                             f"{np.argwhere(nan_a != nan_b)[:5].tolist()}")
    s = np.abs(b[np.isfinite(b)]).max(initial=0.0) if scale is None else _array(scale)
    tol = np.broadcast_to(rel * s, a.shape)
    with np.errstate(invalid="ignore"):  # equal infinities and NaNs agree
        err = np.where((a == b) | nan_b, 0.0, np.abs(a - b))
    over = err > tol
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(err == 0, 0.0, err / tol)
    _log(rel, float(used.max(initial=0.0)), what)
    if over.any():
        i = np.unravel_index(int(np.argmax(used)), err.shape)
        raise AssertionError(
            f"{what}: |actual - expected| = {err[i]:.3g} at {tuple(int(j) for j in i)} "
            f"(actual {a[i]:.9g}, expected {b[i]:.9g}) > {tol[i]:.3g} = {rel:.3g} x scale "
            f"{tol[i] / rel:.3g}; {int(over.sum())} of {err.size} values off")


def assert_close_f32(actual, expected, *, n: float = 1, scale=None, what: str = "") -> None:
    """A float32 computation against another (or against float64): sums of n terms."""
    assert_close(actual, expected, f32(n), scale=scale, what=what)


def assert_close_f64(actual, expected, *, n: float = 1, scale=None, what: str = "") -> None:
    """A float64 computation against another float64 one (numpy, scikit-learn)."""
    assert_close(actual, expected, f64(n), scale=scale, what=what)


def assert_close_net(actual, expected, *, what: str = "") -> None:
    """A network's output against another implementation or kernel path (see NETWORK)."""
    assert_close(actual, expected, NETWORK, what=what)


def approx(expected, rel: float, *, scale=None):
    """pytest.approx with tolerance rel * scale (scale defaults to |expected|)."""
    s = float(np.abs(_array(expected)).max()) if scale is None else float(scale)
    return pytest.approx(expected, rel=0, abs=rel * s)


def approx_f32(expected, *, n: float = 1, scale=None):
    return approx(expected, f32(n), scale=scale)


def approx_f64(expected, *, n: float = 1, scale=None):
    return approx(expected, f64(n), scale=scale)
