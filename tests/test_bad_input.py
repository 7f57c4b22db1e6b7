"""The bad-input catalogue: each wrong thing a new user may give any command gets one line
on stderr, exit code 2, no traceback, and leaves nothing behind that looks complete."""
import os

import h5py
import numpy as np
import pytest
from PIL import Image

from probe.cli import main
from probe.errors import ProbeError
from probe.store import write_features
from refdata import reference_checkpoint

ADM = ["--model", "adm", "--checkpoint", reference_checkpoint("adm", "adm_tiny_uncond"),
       "--config", reference_checkpoint("adm", "adm_tiny_uncond")[:-3] + ".json"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    good = write_features(str(d / "good.h5"), {(10, "b.0"): rng.normal(size=(40, 4))},
                          labels=np.arange(40) % 2, attrs={"pool": "mean", "model": "m"})
    single = write_features(str(d / "single.h5"), {(10, "b.0"): rng.normal(size=(20, 4))},
                            labels=np.zeros(20, int), attrs={"pool": "mean", "model": "m"})
    other_model = write_features(str(d / "other.h5"), {(10, "b.0"): rng.normal(size=(40, 4))},
                                 labels=np.arange(40) % 2, attrs={"pool": "mean", "model": "x"})
    trunc = d / "trunc.h5"
    trunc.write_bytes(open(good, "rb").read()[:700])
    foreign = d / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    incomplete = d / "incomplete.h5"
    incomplete.write_bytes(open(good, "rb").read())
    with h5py.File(incomplete, "r+") as f:
        f.attrs["complete"] = False
    empty = d / "empty"
    os.makedirs(empty / "cls")
    (empty / "cls" / "readme.txt").write_text("not an image")
    split_tree = d / "splits"
    for split in ("train", "val"):
        os.makedirs(split_tree / split / "cls")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(split_tree / split / "cls" / "a.png")
    wrong_ckpt = reference_checkpoint("adm", "adm_tiny_cond_neworder")
    return dict(good=good, single=single, other=other_model, trunc=str(trunc),
                foreign=str(foreign), incomplete=str(incomplete), empty=str(empty),
                wrong_ckpt=wrong_ckpt, dir=str(d), split_tree=str(split_tree))


CASES = [
    # extract
    ("extract: missing checkpoint", ["extract", "--model", "adm-64", "--checkpoint", "/no/such.pt"], "not found"),
    ("extract: checkpoint of another architecture",
     ["extract"] + ADM[:3] + ["{wrong_ckpt}"] + ADM[4:] + ["--limit", "2"], "does not fit"),
    ("extract: unknown model", ["extract", "--model", "dit-xxl"], "unknown model"),
    ("extract: bad --t", ["extract"] + ADM + ["--t", "ten"], "bad --t"),
    ("extract: --t out of range", ["extract"] + ADM + ["--t", "-5"], "outside the schedule"),
    ("extract: log-SNR out of range", ["extract"] + ADM + ["--logsnr", "40"],
     r"log-SNR 40 is outside .*'s range \[-\d+\.\d+, \d+\.\d+\]"),
    ("extract: --t and --logsnr", ["extract"] + ADM + ["--t", "10", "--logsnr", "0"],
     "give --t or --logsnr, not both"),
    ("extract: bad --logsnr", ["extract"] + ADM + ["--logsnr", "snr"], "bad --logsnr"),
    ("extract: bad --blocks", ["extract"] + ADM + ["--blocks", "middle"],
     "has no block .middle. \\(did you mean middle_block\\?\\); it has input_blocks"),
    ("extract: bad --pool", ["extract"] + ADM + ["--pool", "avg-2"], "bad --pool"),
    ("extract: negative batch size", ["extract"] + ADM + ["--batch-size", "-4"], "batch-size"),
    ("extract: zero-length dataset", ["extract"] + ADM + ["--limit", "0"], "zero images"),
    ("extract: folder with no images", ["extract"] + ADM + ["--data", "imagefolder:{empty}"], "no image files"),
    ("extract: unknown dataset", ["extract"] + ADM + ["--data", "cifar10"], "unknown dataset"),
    ("extract: unwritable output", ["extract"] + ADM + ["--out", "/proc/x/f.h5"], "does not exist|not writable"),
    ("extract: output in a folder nobody can create files in",
     ["extract"] + ADM + ["--limit", "2", "--out", "/proc/f.h5"], "cannot create /proc/f.h5.partial"),
    ("extract: image folder without the asked split",
     ["extract"] + ADM + ["--data", "imagefolder:{split_tree}", "--split", "test"],
     r"no test/ folder .* has train/, val/"),
    ("extract: avgK larger than the block's map",
     ["extract"] + ADM + ["--blocks", "middle_block", "--pool", "avg9", "--limit", "2"],
     "larger than a 8x8 block map"),
    ("extract: unknown flag", ["extract"] + ADM + ["--frobnicate"], "unrecognized arguments"),
    # info
    ("info: missing file", ["info", "/no/such.h5"], "not found"),
    ("info: truncated HDF5", ["info", "{trunc}"], "truncated or corrupt"),
    ("info: HDF5 from another tool", ["info", "{foreign}"], "not a probe feature file"),
    # fit / compare
    ("fit: missing file", ["fit", "/no/such.h5"], "not found"),
    ("fit: a folder, not a file", ["fit", "{dir}"], "not a readable HDF5|not found|folder"),
    ("fit: truncated HDF5", ["fit", "{trunc}"], "truncated or corrupt"),
    ("fit: HDF5 from another tool", ["fit", "{foreign}"], "not a probe feature file"),
    ("fit: incomplete file", ["fit", "{incomplete}"], "incomplete"),
    ("fit: key not in file", ["fit", "{good}", "--t", "99", "--block", "b.0"], "no features|t=99|not in"),
    ("fit: spatial head on pooled features", ["fit", "{good}", "--head", "cnn"], "--pool"),
    ("fit: single class", ["fit", "{single}"], "class"),
    ("fit: negative batch size", ["fit", "{good}", "--batch-size", "-1"], "batch-size"),
    ("compare: files of different models", ["compare", "{good}", "{other}", "--heads", "linear"],
     "differently|different"),
    ("compare: unknown head", ["compare", "{good}", "--heads", "svm"], "unknown head|svm"),
    # cka
    ("cka: missing file", ["cka", "/no/such.h5"], "not found"),
    ("cka: truncated HDF5", ["cka", "{trunc}"], "truncated or corrupt"),
    ("cka: bad --across", ["cka", "{good}", "--across", "layers"], "across|invalid choice"),
    # blocks / train
    ("blocks: unknown model", ["blocks", "adm-1024"], "unknown model"),
    ("train: unknown dataset", ["train", "ldae", "--data", "nope"], "unknown dataset"),
    ("train: negative batch size", ["train", "ldae", "--batch-size", "-8"], "batch"),
    ("train: d larger than the patch", ["train", "ldae", "--patch-size", "2", "--latent-dim", "50"],
     "latent|patch"),
]


@pytest.mark.parametrize("what, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(what, argv, message, files, tmp_path, capsys, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    argv = [a.format(**files) for a in argv]
    if argv[0] == "extract" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.h5"), "--quiet"]
    if argv[0] in ("fit", "compare", "train", "cka"):
        argv += ["--out", str(tmp_path / ("out.png" if argv[0] == "cka" else "out"))]
    before = {p for p in tmp_path.rglob("*")}
    assert main(argv) == 2, what
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("probe: error:") and "Traceback" not in err
    assert re.search(message, err), err
    left = sorted(str(p) for p in set(tmp_path.rglob("*")) - before)
    assert not left, left  # nothing at all: no output, no empty folder, no temporary file


def test_debug_shows_the_traceback(files):
    with pytest.raises(ProbeError):
        main(["--debug", "info", files["trunc"]])


def test_disk_full_during_a_run_stops_cleanly(tmp_path, monkeypatch, capsys):
    import errno

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # the part writer fsyncs every part
    out = tmp_path / "full.h5"
    rc = main(["extract"] + ADM + ["--limit", "4", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left" in err and "resume" in err
    assert not out.exists() and not os.listdir(f"{out}.partial/parts")


def test_unexpected_file_system_error_is_one_line(tmp_path, monkeypatch, capsys):
    import probe.cli.info as info

    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.h5"))

    monkeypatch.setattr(info, "run", denied)
    assert main(["info", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and "Traceback" not in err
    with pytest.raises(PermissionError):
        main(["--debug", "info", str(tmp_path / "x.h5")])
