"""extract's typed options (probe.options), the settings stored once, files of the previous
layout, and a model passed to extract left as it was."""
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.options import NoiseOptions, OutputOptions, RunOptions
from probe.pipeline.settings import NOISE_FIELDS, FeatureSettings
from probe.store import open_features

OLD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "old_layout")
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
QUIET = dict(progress=False, log=lambda *a: None)


def _tiny_vit():
    return probe.load_model("timm:vit_tiny_patch16_224",
                            checkpoint=os.path.join(OLD, "tiny-vit.pt"), **TINY_VIT)


def _features(path):
    with open_features(path) as f:
        return {k: f.load(k) for k in f.keys}


@pytest.fixture(scope="module")
def dit():
    return probe.load_model("dit-fmnist")


# ---- files of the previous layout (written by the code before this change) ---------------
@pytest.mark.parametrize("name", ["old-dit.h5", "old-timeless.h5"])
def test_old_files_open_and_show(name, capsys):
    path = os.path.join(OLD, name)
    with h5py.File(path, "r") as f:
        assert "settings" in f.attrs  # the old copy of the settings is there
    with open_features(path) as f:
        assert len(f) == 4 and f.attrs["pool"] == "mean"
    assert main(["info", path]) == 0
    assert "status: complete" in capsys.readouterr().out


def test_old_file_is_complete_for_the_same_command(tmp_path, dit):
    """The resume check reads the old file's attributes: the same command does nothing,
    and a fresh run gives the same features as the old version wrote."""
    out = tmp_path / "old-dit.h5"
    shutil.copy(os.path.join(OLD, "old-dit.h5"), out)
    kw = dict(t=[10], blocks=["blocks.1"], limit=4, batch_size=4, noise_seed=3)
    said = []
    probe.extract(dit, "demo", out=str(out), progress=False, log=said.append, **kw)
    assert "nothing to do" in said[0]
    fresh = probe.extract(dit, "demo", out=str(tmp_path / "new.h5"), **QUIET, **kw)
    old, new = _features(out), _features(fresh)
    for k in old:  # float32 features of size ~1: their rounding differs across CPUs
        np.testing.assert_allclose(new[k], old[k], rtol=1e-5, atol=1e-5)


def test_old_timeless_file_with_noise_attributes_is_complete(tmp_path):
    out = tmp_path / "old-timeless.h5"
    shutil.copy(os.path.join(OLD, "old-timeless.h5"), out)
    with h5py.File(out, "r") as f:
        assert all(k in f.attrs for k in NOISE_FIELDS)  # what the old version recorded
    said = []
    probe.extract(_tiny_vit(), "demo", blocks=["blocks.1"], limit=4, batch_size=4,
                  out=str(out), progress=False, log=said.append)
    assert "nothing to do" in said[0]


# ---- the settings, stored once ------------------------------------------------------------
def test_timeless_file_records_no_noise_and_settings_once(tmp_path):
    path = probe.extract(_tiny_vit(), "demo", blocks=["blocks.1"], limit=4, batch_size=4,
                         out=str(tmp_path / "v.h5"), **QUIET)
    with h5py.File(path, "r") as f:
        names = set(f.attrs)
        settings = FeatureSettings.from_attrs(f.attrs)
    assert not names & set(NOISE_FIELDS) and "settings" not in names
    assert settings is not None and settings.timesteps == () and settings.noise_seed is None
    # every field of the settings is one attribute
    assert set(settings.as_dict()) <= names
    with open_features(path) as f:
        assert f.describe()["noise_seed"] is None and f.attrs["timesteps"] == []


def test_settings_round_trip_through_the_file(tmp_path, dit):
    """What the file holds reads back as the settings the run compared: a file with a
    skipped image, the true labels and a data spec that looks like JSON."""
    s = FeatureSettings(model="m", weights_sha256="0123", timesteps=(5, 9), blocks=("b",),
                        pool="avg2", dtype="float16", class_label="true", data="123",
                        split="test", num_samples=10, image_size=28, transform="x",
                        skip_bad=True, noise_seed=4, ensemble=2, add_noise=False)
    from probe.store import write_features

    path = write_features(str(tmp_path / "s.h5"), {(5, "b"): np.zeros((9, 2))},
                          labels=np.zeros(9, int), attrs=dict(s.as_dict(), num_skipped=1))
    with h5py.File(path, "r") as f:
        assert FeatureSettings.from_attrs(f.attrs) == s
    assert FeatureSettings.from_dict(s.as_dict()) == s


# ---- options as objects or keywords -------------------------------------------------------
def test_option_objects_and_keywords_give_the_same_file(tmp_path, dit):
    a = probe.extract(dit, "demo", blocks=["blocks.1"], limit=6,
                      noise=NoiseOptions(t=[10, 100], noise_seed=5, ensemble=2),
                      run=RunOptions(batch_size=4, progress=False),
                      output=OutputOptions(out=str(tmp_path / "a.h5"), dtype="float16"),
                      log=lambda *x: None)
    b = probe.extract(dit, "demo", t=[10, 100], blocks=["blocks.1"], limit=6, noise_seed=5,
                      ensemble=2, batch_size=4, dtype="float16", out=str(tmp_path / "b.h5"),
                      **QUIET)
    fa, fb = _features(a), _features(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])
    with open_features(a) as f:
        assert f.attrs["noise_seed"] == 5 and f.attrs["ensemble"] == 2
        assert f.attrs["dtype"] == "float16"


def test_a_keyword_wins_over_the_object(tmp_path, dit):
    path = probe.extract(dit, "demo", blocks=["blocks.1"], limit=2, batch_size=2,
                         noise=NoiseOptions(t=[10], noise_seed=1), noise_seed=2,
                         out=str(tmp_path / "k.h5"), **QUIET)
    with open_features(path) as f:
        assert f.attrs["noise_seed"] == 2 and f.attrs["timesteps"] == [10]


@pytest.mark.parametrize("kw, message", [
    (dict(add_nosie=False), "did you mean add_noise"),
    (dict(ensemble=0), "--ensemble must be at least 1"),
    (dict(batch_size=0), "--batch-size must be a positive integer"),
    (dict(dtype="float64"), "bad --dtype"),
    (dict(class_label="cat"), "bad class label"),
    (dict(noise="t=10"), "expected a NoiseOptions"),
])
def test_bad_options_are_one_line_errors(tmp_path, dit, kw, message):
    with pytest.raises(ProbeError, match=message):
        probe.extract(dit, "demo", t=[10], blocks=["blocks.1"], limit=2,
                      out=str(tmp_path / "x.h5"), **QUIET, **kw)
    assert not os.listdir(tmp_path)


# ---- the caller's model -------------------------------------------------------------------
def test_extract_puts_the_model_back(tmp_path, dit):
    model = probe.load_model("dit-fmnist")
    model.train()
    model.net.blocks[0].eval()  # a mixed state, as a training loop with a frozen part has
    modes = {n: m.training for n, m in model.named_modules()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    probe.extract(model, "demo", t=[10], blocks=["blocks.1"], limit=2, batch_size=2,
                  device="cpu", out=str(tmp_path / "m.h5"), **QUIET)
    assert {n: m.training for n, m in model.named_modules()} == modes
    with pytest.raises(ProbeError):  # and after a failure
        probe.extract(model, "demo", t=[10], blocks=["no-such-block"], limit=2,
                      out=str(tmp_path / "n.h5"), **QUIET)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu"
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)


def test_old_and_new_timeless_files_pair_for_training(tmp_path):
    """An old file of a network without timesteps recorded noise settings, a new one does
    not: a head trained on one still tests on the other."""
    from probe.heads.setup import COMPATIBLE
    from probe.store import check_compatible

    new = probe.extract(_tiny_vit(), "demo", blocks=["blocks.1"], limit=4, batch_size=4,
                        out=str(tmp_path / "new.h5"), **QUIET)
    with open_features(os.path.join(OLD, "old-timeless.h5")) as old, open_features(new) as f:
        check_compatible(old, f, what=COMPATIBLE)
        assert old.describe() == f.describe()
