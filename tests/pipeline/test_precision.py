"""--precision: bf16 autocast runs of every family agree with fp32 per block; the parts kept
in float32 are bit for bit float32; non-finite features fail in one line and write nothing.

The oracle for agreement is a linear CKA computed here in numpy (Kornblith et al. 2019,
the HSIC form on centred Gram matrices), not probe's own CKA, and the elementwise error.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.precision import full_precision, keep_fp32, parse_precision
from probe.store import open_features

from refdata import load_reference_model

TINY_SD = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-sd"
N = 24  # images: CKA is taken over the 24 x 24 Gram matrices

# bf16 keeps 8 significant bits: one rounding errs by at most 2^-8 ~ 3.9e-3 relative.  A
# block's output goes through a handful of roundings in series (its input cast, the matmul's
# output, the residual add), so its error is a few eps of the block's scale; 2e-2 is ~5 eps,
# measured against the block's largest magnitude (small entries have no relative accuracy
# in bf16).  Mean pooling averages errors down, so pooled features sit well inside this.
REL_TOL = 2e-2
# The SD U-Net's up path sits behind its whole down path and middle (~20 rounded layers in
# series, with skip connections adding them up): measured 1.5e-2 to 1.8e-2 on tiny SD with
# AVX-512/AMX kernels and with ATEN_CPU_CAPABILITY=default, so 2e-2 leaves no room there.
REL_TOL_FAMILY = {"tiny-sd": 3e-2}
# Errors of ~1e-2 relative are a perturbation of the Gram matrices of order 1e-2; CKA moves
# quadratically with an uncorrelated perturbation, ~(1e-2)^2 = 1e-4, so 0.999 has 10x room
# while unrelated features (or a wrong block) sit far below it.
CKA_MIN = 0.999


def linear_cka(a, b):
    """Linear CKA of (n, p) and (n, q) features: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))
    with K = A A^T, L = B B^T centred by H = I - 11^T/n, in float64."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    n = len(a)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ a @ a.T @ h, h @ b @ b.T @ h
    return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))


def _sd():
    return probe.load_model("sd", checkpoint=str(TINY_SD))


def _torchvision():
    torch.manual_seed(0)
    return probe.load_model("torchvision:mobilenet_v3_small", random_init=True)


MODELS = {  # family: (model or loader, t)
    "dit-fmnist": ("dit-fmnist", [100, 700]),
    "adm-fmnist": ("adm-fmnist", [100, 700]),
    "ldae-fmnist": ("ldae-fmnist", [100]),
    "dae-pixel-fmnist": ("dae-pixel-fmnist", [100]),
    "sup-fmnist": ("sup-fmnist", None),          # timm ViT, no timestep
    "torchvision": (_torchvision, None),
    "tiny-sd": (_sd, [100]),
    "dit-reference": (lambda: load_reference_model("dit", "dit_tiny"), [100]),
    "adm-reference": (lambda: load_reference_model("adm", "adm_tiny_uncond"), [100]),
}


def extract(model, out, precision, t, **kw):
    args = dict(data="demo", t=t, blocks="all", out=str(out), limit=N, batch_size=N,
                progress=False, log=lambda *a: None, precision=precision, device="cpu")
    args.update(kw)
    return probe.extract(model, **args)


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_agrees_with_fp32_per_block(name, tmp_path):
    what, t = MODELS[name]
    model = what() if callable(what) else probe.load_model(what, device="cpu")
    a = extract(model, tmp_path / "fp32.h5", "fp32", t)
    b = extract(model, tmp_path / "bf16.h5", "bf16", t)
    with open_features(a) as fa, open_features(b) as fb:
        assert fa.attrs["precision"] == "fp32" and fb.attrs["precision"] == "bf16"
        assert fa.keys == fb.keys and len(fa.keys) >= 2
        moved = 0.0
        for key in fa.keys:
            x, y = fa.load(key), fb.load(key)
            assert y.dtype == np.float32  # stored in --dtype whatever the precision
            scale = np.abs(x).max()
            err = np.abs(x - y).max() / scale
            assert err <= REL_TOL_FAMILY.get(name, REL_TOL), f"{name} {key}: rel err {err:.2e}"
            assert linear_cka(x, y) >= CKA_MIN, f"{name} {key}: CKA {linear_cka(x, y):.5f}"
            moved = max(moved, err)
        assert moved > 0  # bf16 really ran: some block's features moved off the fp32 ones


def test_fp32_parts_stay_fp32_under_autocast():
    from probe.extractors.embeddings import timestep_embedding

    t = torch.tensor([0, 1, 500, 999])
    want = timestep_embedding(t, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = timestep_embedding(t, 64)
    assert got.dtype == torch.float32 and torch.equal(got, want)

    model = _sd()  # the VAE encoder of prepare(), and the U-Net's diffusers Timesteps
    images = torch.rand(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        want = model.prepare(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.prepare(images)
            noised = model.q_sample(got, 500, torch.ones_like(got))
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert noised.dtype == torch.float32 and torch.equal(
        noised, model.q_sample(want, 500, torch.ones_like(want)))
    assert "net.time_proj" in model.fp32_modules() and "vae" in model.fp32_modules()


def test_keep_fp32_runs_a_module_in_float32():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16
        keep_fp32(lin)
        keep_fp32(lin)  # idempotent
        y = lin(x.bfloat16())  # a bf16 input comes back to float32
    assert y.dtype == torch.float32
    assert torch.equal(y, lin(x.bfloat16().float()))
    assert "weight" in lin.state_dict()


def test_parse_precision_refuses_in_one_line():
    assert parse_precision("bfloat16") == "bf16" and parse_precision(None) == "fp32"
    with pytest.raises(ProbeError, match="use fp32, bf16 or fp16"):
        parse_precision("int8")


def _nan_hook(module, args, output):
    return output * float("nan")


def test_nan_in_a_block_fails_naming_it_and_writes_nothing(tmp_path):
    model = probe.load_model("dit-fmnist", device="cpu")
    handle = model.net.blocks[2].register_forward_hook(_nan_hook)
    out = tmp_path / "f.h5"
    try:
        with pytest.raises(ProbeError) as e:
            extract(model, out, "bf16", [100], batch_size=8)
    finally:
        handle.remove()
    msg = str(e.value)
    assert "\n" not in msg and "blocks.2 (id 3)" in msg and "t=100" in msg
    assert "bf16" in msg
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_fp16_overflow_exits_2_from_the_cli_with_no_file(tmp_path, capsys):
    # A checkpoint whose block 1 computes values past float16's max (65504): finite in
    # float32, inf under fp16 autocast -- the overflow the check exists for.
    state = torch.load(Path(probe.__file__).parent / "weights" / "dit-fmnist.pt",
                       weights_only=True)
    for k in ("blocks.1.mlp.fc2.weight", "blocks.1.mlp.fc2.bias"):
        state[k] = state[k] * 1e6
    ckpt = tmp_path / "big.pt"
    torch.save(state, ckpt)
    out = tmp_path / "f.h5"
    argv = ["extract", "--model", "dit-fmnist", "--checkpoint", str(ckpt), "--data", "demo",
            "--limit", "8", "--t", "100", "--out", str(out), "--device", "cpu", "-q"]
    assert main(argv + ["--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "blocks.1 (id 2)" in err and "fp16" in err
    assert not out.exists() and not os.path.exists(str(out) + ".partial")
    assert main(argv + ["--precision", "fp32"]) == 0  # the same weights are finite in fp32
    assert out.exists()


def test_another_precision_does_not_resume_into_the_same_parts(tmp_path):
    model = probe.load_model("dit-fmnist", device="cpu")
    out = tmp_path / "f.h5"
    calls = []

    def nan_after_first_batch(module, args, output):
        calls.append(1)
        return output * float("nan") if len(calls) > 1 else output

    handle = model.net.blocks[1].register_forward_hook(nan_after_first_batch)
    try:  # the second batch fails: one part of bf16 features is left in OUT.partial
        with pytest.raises(ProbeError):
            extract(model, out, "bf16", [100], batch_size=8, limit=16, blocks="1,2")
    finally:
        handle.remove()
    assert os.path.isdir(str(out) + ".partial") and not out.exists()
    with pytest.raises(ProbeError, match="different settings .*precision"):
        extract(model, out, "fp32", [100], batch_size=8, limit=16, blocks="1,2")
    extract(model, out, "bf16", [100], batch_size=8, limit=16, blocks="1,2")  # resumes
    with open_features(str(out)) as f:
        assert f.attrs["precision"] == "bf16"


def test_num_workers_auto_is_0_on_cpu_and_bad_values_refused():
    from probe.pipeline.gpu import loader_options, resolve_num_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_num_workers("auto", cpu) == 0
    assert 1 <= resolve_num_workers("auto", cuda) <= 8
    assert resolve_num_workers("3", cpu) == 3
    for bad in ("-1", "x", None, "1.5"):
        with pytest.raises(ProbeError, match="--num-workers"):
            resolve_num_workers(bad, cpu)
    opts = loader_options(2, cuda)
    assert opts["pin_memory"] and opts["persistent_workers"] and opts["prefetch_factor"] == 4
    assert loader_options(0, cpu) == {"num_workers": 0, "pin_memory": False}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_low_precision_agrees_with_cpu_fp32(precision, tmp_path):
    model = probe.load_model("adm-fmnist", device="cpu")
    a = extract(model, tmp_path / "cpu.h5", "fp32", [100])
    b = extract(model, tmp_path / "gpu.h5", precision, [100], device="cuda")
    with open_features(a) as fa, open_features(b) as fb:
        for key in fa.keys:
            x, y = fa.load(key), fb.load(key)
            assert np.abs(x - y).max() / np.abs(x).max() <= REL_TOL
            assert linear_cka(x, y) >= CKA_MIN
        assert fb.attrs["channels_last"]  # ADM is a conv net: NHWC on CUDA


def test_full_precision_is_a_no_op_without_autocast():
    with full_precision("meta"), full_precision(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def test_a_compile_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    # torch.compile itself is exercised by benchmarks/bench_gpu.py --compile (tens of
    # seconds of compiling); here a failing compiler stands in for a machine without one.
    from torch._dynamo.exc import TorchDynamoException

    def broken(fn, **kw):
        def run(*a, **k):
            raise TorchDynamoException("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = probe.load_model("dit-fmnist", device="cpu")
    out = tmp_path / "f.h5"
    with pytest.raises(ProbeError) as e:
        extract(model, out, "fp32", [100], compile=True)
    assert "\n" not in str(e.value) and "--compile" in str(e.value)
    assert "no C++ compiler found" in str(e.value)
    assert not out.exists() and not os.path.exists(str(out) + ".partial")
    assert "forward" not in model.net.blocks[0].__dict__  # the eager forwards are back
