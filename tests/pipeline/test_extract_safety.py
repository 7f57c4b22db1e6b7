"""`probe extract` against the mistakes and accidents of real use: a second writer, a bad
image mid-run, a folder without splits, an output folder that cannot be written."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.store import open_features


def _tree(root, classes=("cat", "dog"), per_class=6, bad_at=None):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c)
        for i in range(per_class):
            path = root / c / f"{i}.png"
            if (c, i) == bad_at:
                path.write_bytes(b"not a png")  # a broken download
            else:
                Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(path)


def _extract(out, data, **kw):
    args = dict(t=[10], blocks="all", pool="mean", batch_size=2, progress=False,
                log=lambda *a: None)
    args.update(kw)
    return probe.extract("dit-fmnist", data, out=str(out), **args)


def _read(path):
    with open_features(str(path)) as f:
        assert f.attrs["num_samples"] == len(f.ids)  # rows, not images read
        return {k: f.load(k) for k in f.keys}, list(f.ids), f.attrs["num_skipped"]


def test_second_writer_refuses_even_with_overwrite(tmp_path, capsys):
    out = tmp_path / "f.h5"
    # six timesteps of the U-Net over 2000 images: over a minute here, so the first run is
    # still going while the second is tried, even on a much faster machine
    argv = ["extract", "--model", "adm-fmnist", "--t", "10,100,300,500,700,900", "--blocks", "all",
            "--limit", "2000", "--batch-size", "4", "--quiet", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "probe", *argv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        parts = tmp_path / "f.h5.partial" / "parts"
        deadline = time.time() + 120
        while not (parts.is_dir() and any(parts.glob("*.npz"))):
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "the first run wrote no part"
            time.sleep(0.2)
        for extra in ([], ["--overwrite"]):
            assert main(argv + extra) == 2
            assert "another `probe extract` is writing" in capsys.readouterr().err
        assert first.poll() is None  # the live run was left alone
        assert any(parts.glob("*.npz")) and not out.exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # once the writer is dead its lock is gone, and --overwrite may start over
    assert main(argv[:-5] + ["--limit", "8", "--quiet", "--out", str(out), "--overwrite"]) == 0
    with open_features(str(out)) as f:
        assert len(f) == 8


def test_the_advice_after_a_bad_image_resumes_the_run(tmp_path, capsys):
    _tree(tmp_path / "imgs", bad_at=("dog", 3))
    spec = f"imagefolder:{tmp_path / 'imgs'}"
    out = tmp_path / "f.h5"
    with pytest.raises(ProbeError, match=r"dog.3\.png.*--skip-bad"):
        _extract(out, spec)
    assert not out.exists()
    parts = list((tmp_path / "f.h5.partial" / "parts").glob("*.npz"))
    assert len(parts) >= 4  # the images before the bad one were done, and are kept

    log = []
    _extract(out, spec, skip_bad=True, log=log.append)
    assert any("already done" in line for line in log)
    assert any("1 skipped" in line for line in log), log
    resumed = _read(out)

    fresh = tmp_path / "fresh.h5"
    _extract(fresh, spec, skip_bad=True)
    want = _read(fresh)
    assert resumed[1] == want[1] and os.path.join("dog", "3.png") not in resumed[1]
    assert resumed[2] == want[2] == 1
    for k in want[0]:
        np.testing.assert_array_equal(resumed[0][k], want[0][k])  # same machine, same kernels


def test_flat_image_folder_read_as_both_splits_is_flagged_by_fit(tmp_path):
    _tree(tmp_path / "flat", per_class=8)
    spec = f"imagefolder:{tmp_path / 'flat'}"
    _extract(tmp_path / "tr.h5", spec, split="train")
    _extract(tmp_path / "te.h5", spec, split="test")
    result = probe.fit(str(tmp_path / "tr.h5"), test=str(tmp_path / "te.h5"), block="blocks.1",
                       head="linear",
                       epochs=1, progress=False)
    notes = " ".join(result.summary["notes"])
    assert "16 of the 16 test images are also in the train file" in notes


def test_split_folders_are_used_when_present(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        _tree(tmp_path / "tree" / split, per_class=n)
    spec = f"imagefolder:{tmp_path / 'tree'}"
    _extract(tmp_path / "te.h5", spec, split="test")
    with open_features(str(tmp_path / "te.h5")) as f:
        assert len(f) == 4 and f.attrs["split"] == "test"


def test_output_folder_without_write_permission(tmp_path, monkeypatch, capsys):
    # root ignores chmod, so the permission check is driven directly
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real(p, mode))
    out = tmp_path / "f.h5"
    assert main(["extract", "--model", "dit-fmnist", "--limit", "2", "--out", str(out)]) == 2
    assert "is not writable: choose another --out" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_blocks_are_stored_in_forward_order(tmp_path):
    _extract(tmp_path / "f.h5", "demo", blocks="blocks.3,blocks.0", limit=4)
    with open_features(str(tmp_path / "f.h5")) as f:
        assert [b for _, b in f.keys] == ["blocks.0", "blocks.3"]
        assert f.attrs["command"] == "probe.extract() from Python"  # not the host's argv


def test_info_into_a_closed_pipe_is_quiet(tmp_path):
    _extract(tmp_path / "f.h5", "demo", limit=4)
    r = subprocess.run(f"'{sys.executable}' -m probe info '{tmp_path / 'f.h5'}' | head -1",
                       shell=True, capture_output=True, text=True)
    assert r.stdout.count("\n") == 1 and "error" not in r.stderr
