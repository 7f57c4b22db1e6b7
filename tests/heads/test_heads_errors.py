"""Bad input: each is one line, ProbeError from the API and exit code 2 from the CLI."""
import h5py
import numpy as np
import pytest
import torch

import probe
from heads.heads_data import FAST, blob_files, spatial_blobs, write
from probe.cli import main
from probe.errors import ProbeError
from probe.store import create


def _cli_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe: error: ") and "\n" not in err
    return err


def _pair(tmp_path, train_attrs=None, test_attrs=None, test_keys=((100, "mid"),), **kw):
    x, y = spatial_blobs(120)
    tr = write(tmp_path / "tr.h5", {(100, "mid"): x}, y, **(train_attrs or {}))
    te = write(tmp_path / "te.h5", {k: x[:60] for k in test_keys}, y[:60], split="test",
               **(test_attrs or {}))
    return tr, te


@pytest.mark.parametrize("attrs, word", [
    ({"model": "adm-64"}, "model"),
    ({"pool": "avg2"}, "pool"),
    ({"add_noise": False}, "add_noise"),
    ({"weights_sha256": "0f3a"}, "weights_sha256"),
])
def test_train_and_test_made_differently(tmp_path, capsys, attrs, word):
    tr, te = _pair(tmp_path, test_attrs=attrs)
    with pytest.raises(ProbeError, match=word):
        probe.fit(tr, test=te, **FAST)
    err = _cli_error(capsys, ["fit", tr, "--test", te, "--epochs", "1"])
    assert "made differently" in err and word in err


def test_test_file_without_the_timestep(tmp_path, capsys):
    tr, te = _pair(tmp_path, test_keys=((500, "mid"),))
    err = _cli_error(capsys, ["fit", tr, "--test", te, "--epochs", "1"])
    assert "te.h5 has no features at t=100" in err


def test_test_file_with_other_classes(tmp_path):
    x, y = spatial_blobs(120)
    tr = write(tmp_path / "tr.h5", {(100, "mid"): x}, y)
    te = tmp_path / "te.h5"
    from probe.store import write_features
    write_features(te, {(100, "mid"): x}, labels=y, class_names=["w", "x", "y", "z"],
                   attrs={"model": "toy", "pool": "avg4", "add_noise": True, "ensemble": 1})
    with pytest.raises(ProbeError, match="different class names"):
        probe.fit(tr, test=str(te), **FAST)


def test_key_not_in_file(tmp_path, capsys):
    tr, _ = blob_files(tmp_path, keys=((10, "a"), (100, "a")))
    err = _cli_error(capsys, ["fit", tr, "--t", "50", "--block", "a"])
    assert "no features at t=50; it has t in 10, 100" in err
    err = _cli_error(capsys, ["fit", tr, "--t", "10", "--block", "aa"])
    assert "has no block 'aa' (did you mean a?); it has a (1)" in err
    err = _cli_error(capsys, ["fit", tr])  # two keys: must choose
    assert "--t and --block" in err
    err = _cli_error(capsys, ["compare", tr, "--blocks", "b", "--out", str(tmp_path / "c")])
    assert "no block 'b'" in err


def test_spatial_head_on_pooled_features(tmp_path, capsys):
    tr, te = blob_files(tmp_path, pooled=True)
    for head in ("cnn", "attention"):
        err = _cli_error(capsys, ["fit", tr, "--test", te, "--head", head])
        assert f"the {head} head needs a spatial map" in err and "--pool avg4" in err
    err = _cli_error(capsys, ["compare", tr, te, "--heads", "linear,cnn", "--out", str(tmp_path / "c")])
    assert "needs a spatial map" in err
    assert not (tmp_path / "c").exists()  # refused before training anything


def test_incomplete_file(tmp_path, capsys):
    x, y = spatial_blobs(50)
    f = create(tmp_path / "part.h5", num_samples=50, shapes={(100, "mid"): x.shape[1:]},
               dtype=np.float32, labels=y, ids=range(50), class_names=list("abcd"), attrs={})
    f.close()  # never marked complete
    err = _cli_error(capsys, ["fit", str(tmp_path / "part.h5")])
    assert "incomplete" in err


def test_corrupt_file(tmp_path, capsys):
    tr, te = blob_files(tmp_path)
    data = open(tr, "rb").read()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data[: len(data) // 3])  # truncated
    err = _cli_error(capsys, ["fit", str(bad)])
    assert "not a readable HDF5 file" in err
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 4096)
    _cli_error(capsys, ["compare", tr, str(junk), "--out", str(tmp_path / "c")])
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    err = _cli_error(capsys, ["fit", str(tmp_path / "other.h5")])
    assert "not a probe feature file" in err


def test_single_class(tmp_path, capsys):
    x, _ = spatial_blobs(80)
    tr = write(tmp_path / "one.h5", {(100, "mid"): x}, np.zeros(80, int))
    err = _cli_error(capsys, ["fit", tr])
    assert "single class" in err


def test_bad_options(tmp_path, capsys):
    tr, te = blob_files(tmp_path)
    assert "did you mean attention" in _cli_error(capsys, ["fit", tr, "--head", "atention"])
    assert "--val-fraction" in _cli_error(capsys, ["fit", tr, "--val-fraction", "0"])
    assert "--epochs" in _cli_error(capsys, ["fit", tr, "--epochs", "0"])
    assert "--hidden" in _cli_error(capsys, ["fit", tr, "--hidden", "a,b"])
    if not torch.cuda.is_available():
        assert "no CUDA device is available" in _cli_error(capsys, ["fit", tr, "--device", "cuda"])
    assert "--heads" in _cli_error(capsys, ["compare", tr, te, "--heads", ","])
    with pytest.raises(ProbeError, match="unknown option 'epoch'"):
        probe.fit(tr, epoch=3)
