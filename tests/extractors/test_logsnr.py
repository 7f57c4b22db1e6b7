"""One noise axis: log-SNR = log(α_t² / σ_t²) for every family, recorded per t in the
feature file, and ``--logsnr`` selection.  Oracles: the schedules' published formulas
computed in numpy, diffusers' own ``DDPMScheduler`` table, and least squares on the
noised tensors themselves."""
import math

import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.extractors.schedules import DDPMSchedule, PipelineSchedule, noise_table, t_for_log_snr
from probe.extractors.sit.schedule import InterpolantSchedule
from probe.selection import LogSNR
from probe.store import open_features, write_features

T = 1000


def _numpy_abar(kind):
    """ᾱ_t from the papers' formulas (Ho et al. linear, Nichol & Dhariwal cosine, Stable
    Diffusion's scaled linear), in float64."""
    if kind == "linear":
        betas = np.linspace(1e-4, 0.02, T)
    elif kind == "scaled_linear":
        betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
    else:
        f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


def _float32_bound(abar):
    """How far a table made from float32 betas may be from the float64 one, in log ᾱ:
    each beta is off by up to 2^-24 relative, which moves log(1 - β) by 2^-24 β / (1 - β)."""
    betas = 1 - abar / np.concatenate([[1.0], abar[:-1]])
    return np.cumsum(2.0 ** -23 * betas / (1 - betas))  # twice the rounding: a safe margin


def _schedule(kind):
    if kind == "scaled_linear":
        from diffusers import DDPMScheduler

        return PipelineSchedule(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                              beta_end=0.012))
    return DDPMSchedule(kind)


@pytest.mark.parametrize("kind", ["linear", "cosine", "scaled_linear"])
def test_ddpm_log_snr_matches_the_formula_and_round_trips(kind):
    from diffusers import DDPMScheduler

    s = _schedule(kind)
    abar = _numpy_abar(kind)
    ts = torch.arange(T)
    # diffusers holds the betas in float32: log ᾱ is off by up to `bound`, log(1 - ᾱ) by
    # bound · ᾱ / (1 - ᾱ)
    bound = _float32_bound(abar)
    lam = np.log(abar / (1 - abar))
    assert np.all(np.abs(s.log_snr(ts).numpy() - lam) <= bound * (1 + abar / (1 - abar)))
    alpha, sigma = s.coefficients(ts)
    assert np.all(np.abs(np.log(alpha.numpy() ** 2 / abar)) <= bound)  # α_t = sqrt(ᾱ_t)
    np.testing.assert_allclose(alpha.numpy() ** 2 + sigma.numpy() ** 2, 1, rtol=1e-12)
    # diffusers' own table (float32): ᾱ to float32 rounding
    beta = {"cosine": "squaredcos_cap_v2"}.get(kind, kind)
    kw = dict(beta_start=0.00085, beta_end=0.012) if kind == "scaled_linear" else {}
    ref = DDPMScheduler(beta_schedule=beta, **kw).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(alpha.numpy() ** 2, ref, rtol=1e-5)
    for t in (0, 1, 17, 250, 500, 998, 999):
        assert t_for_log_snr(s, float(s.log_snr(t)), "m", log=lambda m: None) == t
    # between two steps: the nearer one, logged with the log-SNR reached
    lo, hi = float(s.log_snr(101)), float(s.log_snr(100))
    said = []
    assert t_for_log_snr(s, 0.7 * hi + 0.3 * lo, "m", log=said.append) == 100
    assert said == [f"m: --logsnr {0.7 * hi + 0.3 * lo:g} -> t=100 (log-SNR {hi:.4g})"]


@pytest.mark.parametrize("convention", ["sit", "repa"])
def test_sit_log_snr_round_trips_exactly(convention):
    s = InterpolantSchedule(convention)
    for t in (0.01, 0.1, 0.25, 0.5, 0.9, 0.99):
        clean_frac = t if convention == "sit" else 1 - t  # α_t
        assert float(s.log_snr(t)) == pytest.approx(2 * math.log(clean_frac / (1 - clean_frac)))
        assert t_for_log_snr(s, float(s.log_snr(t)), "m") == pytest.approx(t, abs=1e-12)
    with pytest.raises(ProbeError, match="finite"):
        t_for_log_snr(s, math.inf, "m")


def _snr_of(x_t, x0, eps):
    """α and σ recovered from the noised tensor by least squares on (x0, eps)."""
    basis = np.stack([x0.flatten().double().numpy(), eps.flatten().double().numpy()], 1)
    (a, s), *_ = np.linalg.lstsq(basis, x_t.flatten().double().numpy(), rcond=None)
    return a, s


@pytest.mark.parametrize("t_ddpm", [10, 258, 700])
def test_sit_and_ddpm_at_equal_log_snr_get_inputs_of_equal_snr(t_ddpm):
    dit = probe.load_model("dit-fmnist", random_init=True)
    sit = probe.load_model("sit-fmnist", random_init=True)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 1, 28, 28, generator=g), torch.randn(2, 1, 28, 28, generator=g)
    t_sit = t_for_log_snr(sit.schedule, float(dit.schedule.log_snr(t_ddpm)), "sit")
    a_d, s_d = _snr_of(dit.q_sample(x0, t_ddpm, eps), x0, eps)
    a_s, s_s = _snr_of(sit.q_sample(x0, t_sit, eps), x0, eps)
    # float32 tensors: the recovered coefficients carry relative error ~1e-6
    assert math.log(a_d ** 2 / s_d ** 2) == pytest.approx(math.log(a_s ** 2 / s_s ** 2), abs=1e-4)
    assert a_s + s_s == pytest.approx(1, abs=1e-5)  # and SiT's own path: α + σ = 1
    assert math.log(a_d ** 2 / s_d ** 2) == pytest.approx(float(dit.schedule.log_snr(t_ddpm)),
                                                          abs=1e-4)


def test_out_of_range_log_snr_is_one_line_with_the_range(tmp_path, capsys):
    with pytest.raises(ProbeError, match=r"outside m's range \[-10.12, 9.21\]"):
        t_for_log_snr(DDPMSchedule("linear"), 20.0, "m")
    out = tmp_path / "x.h5"
    assert main(["extract", "--model", "dit-fmnist", "--logsnr", "30", "--data", "demo",
                 "--limit", "2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "outside dit-fmnist's range [" in err and len(err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "x.h5.partial").exists()


def test_extract_records_the_table_and_logsnr_selects_it(tmp_path, capsys):
    out = tmp_path / "dit.h5"
    assert main(["extract", "--model", "dit-fmnist", "--logsnr", "0,-4", "--blocks", "1",
                 "--data", "demo", "--limit", "2", "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr()
    abar = _numpy_abar("linear")
    lam = np.log(abar / (1 - abar))
    want = sorted(int(np.argmin(np.abs(lam - x))) for x in (0, -4))
    assert f"--logsnr 0 -> t={want[0]} (log-SNR {lam[want[0]]:.4g})" in said.out + said.err
    with open_features(out) as f:
        assert f.timesteps == want
        for t, row in f.noise_levels().items():
            assert row["alpha"] == pytest.approx(abar[t] ** 0.5, rel=2e-6)
            assert row["sigma"] == pytest.approx((1 - abar[t]) ** 0.5, rel=2e-6)
            assert row["logsnr"] == pytest.approx(lam[t], abs=2e-6)
        assert f.attrs["logsnr_range"] == pytest.approx([lam.min(), lam.max()])
        assert f.select(LogSNR((-3.5,))) == [(want[1], "blocks.0")]  # the held t nearest
    assert main(["info", str(out), "--logsnr", "0.3"]) == 0
    text = capsys.readouterr()
    assert f"t={want[0]} (log-SNR" in text.err
    assert "log-SNR" in text.out and f"{lam[want[1]]:.5g}" in text.out  # the whole table
    assert f"t{want[0]}/blocks.0" in text.out
    assert f"t{want[1]}/" not in text.out  # only the key selected is listed


def test_a_continuous_t_is_taken_exactly(tmp_path):
    out = tmp_path / "sit.h5"
    assert main(["extract", "--model", "sit-fmnist", "--logsnr", "-2", "--blocks", "1",
                 "--data", "demo", "--limit", "2", "--out", str(out), "--quiet"]) == 0
    with open_features(out) as f:
        (t,) = f.timesteps
        assert t == pytest.approx(1 / (1 + math.exp(1)), abs=1e-15)  # α/σ = e^-1, α + σ = 1
        assert f.noise_levels()[t]["logsnr"] == pytest.approx(-2, abs=1e-12)
        assert f.attrs["schedule"]["convention"] == "sit"


def test_reading_an_old_file_without_the_table(tmp_path):
    path = write_features(tmp_path / "old.h5", {"t10/b": np.zeros((2, 3))}, labels=[0, 1])
    with open_features(path) as f:
        assert f.noise_levels() == {}
        with pytest.raises(ProbeError, match="records no log-SNR"):
            f.select(LogSNR((0.0,)))


def test_a_written_table_is_read_by_nearest_log_snr(tmp_path):
    s = DDPMSchedule("cosine")
    path = write_features(tmp_path / "f.h5", {"t10/b": np.zeros((2, 3)),
                                              "t500/b": np.zeros((2, 3))},
                          labels=[0, 1], attrs=noise_table(s, [10, 500]))
    with open_features(path) as f:
        assert f.select(LogSNR((float(s.log_snr(480)),))) == [(500, "b")]
        assert f.select(LogSNR((8.0,))) == [(10, "b")]
        with pytest.raises(ProbeError, match="outside"):
            f.select(LogSNR((-40.0,)))
    assert main(["info", str(path), "--t", "10", "--logsnr", "0"]) == 2


def test_cka_across_logsnr_pairs_keys_of_equal_noise(tmp_path):
    """A DDPM file and a SiT file: B's keys are those at the t nearest A's log-SNR, and CKA
    of features that are the same up to a rotation is 1 exactly where the noise matches."""
    ddpm, sit = DDPMSchedule("linear"), InterpolantSchedule("sit")
    rng = np.random.default_rng(0)
    feats = {lam: rng.normal(size=(30, 6)) for lam in (-2.0, 2.0)}
    t_d = {lam: t_for_log_snr(ddpm, lam, "d", log=lambda m: None) for lam in feats}
    t_s = {lam: t_for_log_snr(sit, lam, "s", log=lambda m: None) for lam in feats}
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a = write_features(tmp_path / "a.h5", {(t_d[lam], "b"): x for lam, x in feats.items()},
                       labels=np.zeros(30, int), attrs=noise_table(ddpm, list(t_d.values())))
    extra = t_for_log_snr(sit, 6.0, "s", log=lambda m: None)  # matches no row: left out
    b = write_features(tmp_path / "b.h5",
                       {**{(t_s[lam], "c"): x @ q for lam, x in feats.items()},
                        (extra, "c"): rng.normal(size=(30, 6))},
                       labels=np.zeros(30, int),
                       attrs=noise_table(sit, [*t_s.values(), extra]))
    res = probe.cka(a, b, across="logsnr")
    assert res.cols == sorted((t, "c") for t in t_s.values())
    for lam in feats:
        assert res.value((t_d[lam], "b"), (t_s[lam], "c")) == pytest.approx(1, abs=1e-6)
    (panel,) = res.panels()
    assert panel.title == "b vs c"  # noisiest first, labelled by the log-SNR each file reached
    assert panel.row_labels == [f"{float(ddpm.log_snr(t_d[lam])):.2f}" for lam in (-2.0, 2.0)]
    assert res.to_dict()["logsnr"]["cols"] == pytest.approx([-2.0, 2.0])
    lines, ref = res.line()  # each row against B's key of nearest log-SNR: the rotated copy
    assert ref == "the column of nearest log-SNR"
    assert lines["b"][1] == pytest.approx([1, 1], abs=1e-6)
    out = tmp_path / "cka.png"
    assert main(["cka", str(a), str(b), "--across", "logsnr", "--out", str(out)]) == 0
    assert out.exists()
    old = write_features(tmp_path / "old.h5", {"t10/c": feats[2.0]}, labels=np.zeros(30, int))
    with pytest.raises(ProbeError, match="records no log-SNR"):
        probe.cka(a, old, across="logsnr")


def test_correspond_takes_logsnr_for_extraction_and_reading(tmp_path, capsys):
    out = tmp_path / "corr"
    assert main(["correspond", "--model", "adm-fmnist", "--data", "warp:demo", "--limit", "2",
                 "-q", "--device", "cpu", "--logsnr", "2", "--blocks", "middle_block",
                 "--out", str(out)]) == 0
    abar = _numpy_abar("linear")
    t = int(np.argmin(np.abs(np.log(abar / (1 - abar)) - 2)))
    said = capsys.readouterr()
    assert said.out.count(f"--logsnr 2 -> t={t}") + said.err.count(f"--logsnr 2 -> t={t}") == 2
    import json

    report = json.loads((out / "pck.json").read_text())
    assert [v["variant"] for v in report["variants"]] == [f"t{t}/middle_block"]
