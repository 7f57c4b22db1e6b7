"""probe extract: determinism, resume, refusal, bad images, and the values themselves."""
import fcntl
import os

import numpy as np
import pytest
import torch
from PIL import Image

import probe
from probe.cli import main
from probe.data import load_dataset
from probe.errors import ProbeError
from probe.pipeline.noise import per_sample_noise
from probe.store import open_features

from refdata import reference_checkpoint, reference_config
from tolerances import HALF_ULP16, NETWORK, assert_close, assert_close_f32, assert_close_net

N = 24
BLOCKS = ["input_blocks.2", "middle_block"]


def run(model, out, **kw):
    args = dict(data="demo", t=[10, 500], blocks=BLOCKS, out=str(out), limit=N, pool="mean",
                batch_size=8, progress=False, log=lambda *a: None)
    args.update(kw)
    return probe.extract(model, **args)


def read_all(path):
    with open_features(path) as f:
        return {k: f.load(k) for k in f.keys}, f.ids, f.labels


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory, tiny_adm):
    return run(tiny_adm, tmp_path_factory.mktemp("ref") / "ref.h5")


@pytest.mark.numerics
def test_features_equal_a_direct_forward_pass(tiny_adm, reference_file):
    feats, ids, labels = read_all(reference_file)
    data = load_dataset("demo", "train", 32, 3)
    idx = [3, 17]
    images = torch.stack([data[i][0] for i in idx])
    x0 = images * 2 - 1  # ADM's own normalisation, written out here
    for t in (10, 500):
        abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
        eps = per_sample_noise(x0.shape[1:], 0, [data.ids[i] for i in idx], t)
        xt = (abar.sqrt() * x0 + (1 - abar).sqrt() * eps).float()
        with torch.no_grad():
            out = tiny_adm.forward_intermediates(xt, t, BLOCKS, stop_early=False)
        for b in BLOCKS:
            assert_close_net(feats[(t, b)][idx], out[b].mean(dim=(2, 3)), what=b)
    assert ids[:3] == data.ids[:3]
    np.testing.assert_array_equal(labels, data.labels[:N])


@pytest.mark.numerics
def test_independent_of_batch_size_workers_and_stacking(tiny_adm, reference_file, tmp_path):
    ref, _, _ = read_all(reference_file)
    for i, kw in enumerate([dict(batch_size=5), dict(batch_size=24, num_workers=2),
                            dict(batch_size=7, stack_t=True)]):
        got, _, _ = read_all(run(tiny_adm, tmp_path / f"{i}.h5", **kw))
        for k in ref:
            assert_close_net(got[k], ref[k], what=str(kw))  # other batch shapes, other kernels


@pytest.mark.numerics
def test_pooling_variants_agree(tiny_adm, reference_file, tmp_path):
    ref, _, _ = read_all(reference_file)
    full, _, _ = read_all(run(tiny_adm, tmp_path / "none.h5", pool="none"))
    avg, _, _ = read_all(run(tiny_adm, tmp_path / "avg2.h5", pool="avg2"))
    for k in ref:  # means of h * w values summed in other orders, at the scale of the values
        c, h, w = full[k].shape[1:]
        top = np.abs(full[k]).max()
        assert_close_f32(full[k].mean(axis=(2, 3)), ref[k], n=h * w, scale=top)
        assert_close_f32(avg[k].mean(axis=(2, 3)), ref[k], n=h * w, scale=top)
        blocks = full[k].reshape(N, c, 2, h // 2, 2, w // 2).mean(axis=(3, 5))
        assert_close_f32(avg[k], blocks, n=h * w // 4, scale=top)


@pytest.mark.numerics
def test_clean_input_mode_and_float16(tiny_adm, tmp_path):
    """--no-noise feeds model.prepare(images) itself, only conditioned on t.  At t=900 noising
    leaves almost nothing of the image, so a run that noised anyway could not pass."""
    t = 900
    clean, _, _ = read_all(run(tiny_adm, tmp_path / "clean.h5", add_noise=False,
                               dtype="float16", t=[t]))
    noised, _, _ = read_all(run(tiny_adm, tmp_path / "noised.h5", dtype="float16", t=[t]))
    data = load_dataset("demo", "train", 32, 3)
    images = torch.stack([data[i][0] for i in range(N)])
    with torch.no_grad():
        out = tiny_adm.forward_intermediates(tiny_adm.prepare(images), t, BLOCKS)
    for b in BLOCKS:
        got, want = clean[(t, b)], out[b].mean(dim=(2, 3)).numpy()
        assert got.dtype == np.float16
        # float16 rounding of each value (half an ulp) on top of the network's own
        tol = HALF_ULP16 * np.abs(want) + NETWORK * np.abs(want).max()
        assert_close(got, want, 1.0, scale=tol)
        # noise at t=900 moves the features by more than the images differ from each other
        diff = noised[(t, b)].astype(np.float32) - got
        spread = got.astype(np.float32) - got.astype(np.float32).mean(axis=0)
        assert np.linalg.norm(diff) > np.linalg.norm(spread), b


def test_resume_after_interruption_matches(tiny_adm, reference_file, tmp_path, monkeypatch):
    from probe.pipeline.workdir import Workdir

    out = tmp_path / "resumed.h5"
    calls = {"n": 0}
    real = Workdir.write_part

    def dying(self, *a):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, *a)

    monkeypatch.setattr(Workdir, "write_part", dying)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_adm, out)
    assert not out.exists() and len(os.listdir(f"{out}.partial/parts")) == 2
    with pytest.raises(ProbeError, match="incomplete|not found"):
        open_features(str(out))
    monkeypatch.setattr(Workdir, "write_part", real)
    run(tiny_adm, out, batch_size=3)  # a different batch size must not matter
    ref, ids, _ = read_all(reference_file)
    got, ids2, _ = read_all(out)
    assert ids == ids2 and not os.path.exists(f"{out}.partial")
    for k in ref:
        assert_close_net(got[k], ref[k])  # batch size 3 against 8: other kernels


def test_refuses_other_commands_and_concurrent_writers(tiny_adm, reference_file, tmp_path):
    msgs = []
    run(tiny_adm, reference_file, log=msgs.append)  # same command: nothing to do
    assert "nothing to do" in msgs[0]
    with pytest.raises(ProbeError, match="different command"):
        run(tiny_adm, reference_file, t=[20])
    out = tmp_path / "busy.h5"
    os.makedirs(f"{out}.partial")
    with open(f"{out}.partial/lock.0", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ProbeError, match="another"):
            run(tiny_adm, out)
    assert not out.exists()


def _image_tree(root, bad=False):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        os.makedirs(root / c)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    if bad:
        (root / "dog" / "broken.png").write_bytes(b"not a png")


def test_bad_images_stop_or_are_skipped(tiny_adm, tmp_path):
    _image_tree(tmp_path / "imgs", bad=True)
    spec = f"imagefolder:{tmp_path / 'imgs'}"
    out = tmp_path / "f.h5"
    with pytest.raises(ProbeError, match="broken.png"):
        run(tiny_adm, out, data=spec, limit=None)
    assert not out.exists()
    run(tiny_adm, out, data=spec, limit=None, skip_bad=True, overwrite=True)
    with open_features(str(out)) as f:
        assert len(f) == 6 and f.attrs["num_skipped"] == 1
        assert [s.decode() for s in f.h5["skipped_ids"][...]] == [os.path.join("dog", "broken.png")]
        assert f.class_names == ["cat", "dog"] and list(f.labels) == [0, 0, 0, 1, 1, 1]


ADM_FLAGS = []
for k, v in reference_config("adm", "adm_tiny_uncond").items():
    ADM_FLAGS += ["--config", f"{k}={v}"]
CLI = ["extract", "--model", "adm", "--checkpoint", reference_checkpoint("adm", "adm_tiny_uncond"),
       *ADM_FLAGS, "--limit", "4", "--quiet"]


@pytest.mark.parametrize("extra, message", [
    (["--data", "nosuchset"], "unknown dataset"),
    (["--pool", "max"], "bad --pool"),
    (["--t", "1000"], "outside the schedule"),
    (["--t", "ten"], "bad --t"),
    (["--blocks", "output_blocks.99"], "has no block 'output_blocks.99'"),
    (["--blocks", "40"], "out of range"),
    (["--batch-size", "-1"], "batch-size"),
    (["--out", "/proc/nope/f.h5"], "does not exist|not writable"),
    (["--data", "imagefolder:/no/such/dir"], "not found"),
])
def test_bad_input_is_one_line_exit_2(extra, message, tmp_path, capsys):
    out = tmp_path / "f.h5"
    args = CLI + ["--out", str(out)] + extra if "--out" not in extra else CLI + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("probe: error:")
    import re

    assert re.search(message, err), err
    assert os.listdir(tmp_path) == []  # no output, run folder or temporary file


def test_cli_extract_and_info(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert main(CLI + ["--out", str(out), "--t", "5,50", "--blocks", "1,middle_block"]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "status: complete" in text and "t50/middle_block: (4, 64)" in text
    assert "weights_sha256" in text and "noise_seed: 0" in text
