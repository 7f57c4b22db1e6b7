"""`probe correspond` end to end on warp:demo, the feature cache, and bad input."""
import json
import os

import numpy as np
import pytest

from probe.cli import main
from probe.correspondence import load_pairs
from probe.store import write_features

RUN = ["correspond", "--model", "adm-fmnist", "--data", "warp:demo", "--limit", "3", "-q",
       "--device", "cpu"]


def _h5(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".h5"))


def test_end_to_end_and_cache_reuse(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(RUN + ["--t", "10,100", "--blocks", "middle_block", "--alpha", "0.05,0.1",
                       "--out", str(out)]) == 0
    report = json.loads((out / "pck.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["t10/middle_block", "t100/middle_block"]
    assert report["threshold"] == "bbox" and report["alphas"] == [0.05, 0.1]
    v = report["variants"][0]
    assert v["points"] + v["invisible_points"] == 3 * 20
    assert v["per_point"]["0.05"] <= v["per_point"]["0.1"]
    assert (out / "pck_categories.csv").exists() and (out / "pairs.png").exists()
    assert (out / "pck_vs_t.png").exists()
    (cached,) = _h5(out / "features")
    # a second run on a subset of the keys reuses the cached maps: no new file
    capsys.readouterr()
    assert main(RUN + ["--t", "100", "--blocks", "middle_block", "--out", str(out),
                       "--overwrite", "--match", "soft", "--window", "1"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert _h5(out / "features") == [cached]
    again = json.loads((out / "pck.json").read_text())
    assert again["features"] == [str(out / "features" / cached)]
    # explicit keys with a model: the keys' grid is extracted (here: found in the cache)
    assert main(RUN + ["--keys", "t10/middle_block", "--out", str(out), "--overwrite"]) == 0
    assert "reusing" in capsys.readouterr().out and _h5(out / "features") == [cached]
    keyed = json.loads((out / "pck.json").read_text())
    assert [v["variant"] for v in keyed["variants"]] == ["t10/middle_block"]
    assert keyed["variants"][0]["per_point"]["0.1"] == v["per_point"]["0.1"]
    # the same maps read back through --features score as the extraction did
    assert main(["correspond", "--features", str(out / "features" / cached), "--data",
                 "warp:demo", "--limit", "3", "--keys", "t10/middle_block", "--out",
                 str(tmp_path / "again"), "-q", "--device", "cpu"]) == 0
    back = json.loads((tmp_path / "again" / "pck.json").read_text())
    assert back["variants"][0]["per_point"]["0.1"] == v["per_point"]["0.1"]


def _maps_file(path, ids, key="t10/a", pooled=False, whole=True):
    rng = np.random.default_rng(0)
    shape = (len(ids), 4) if pooled else (len(ids), 4, 7, 7)
    transform = "resize to 28x28 (whole image, aspect ratio not kept; PIL bicubic)" if whole \
        else "resize shorter side to 28, center crop 28"
    write_features(path, {key: rng.standard_normal(shape)}, labels=np.zeros(len(ids), int),
                   ids=ids, attrs={"transform": transform})
    return str(path)


@pytest.fixture
def ids():
    return load_pairs("warp:demo", limit=3).image_ids()


def _fails(argv, capsys, match, out):
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "pck.json").exists()


BASE = ["correspond", "--data", "warp:demo", "--limit", "3", "-q", "--device", "cpu"]


def test_bad_input(tmp_path, capsys, ids):
    good = _maps_file(tmp_path / "good.h5", ids)
    out = tmp_path / "o"
    _fails(BASE + ["--features", good, "--alpha", "0"], capsys, "alpha must be > 0", out)
    _fails(BASE + ["--features", _maps_file(tmp_path / "pooled.h5", ids, pooled=True)], capsys,
           "pooled vectors", out)
    _fails(BASE + ["--features", _maps_file(tmp_path / "crop.h5", ids, whole=False)], capsys,
           "centre-cropped", out)
    other = _maps_file(tmp_path / "other.h5", ids, key="t10/b")
    _fails(BASE + ["--features", good, other, "--concat", "--keys", "t10/a"], capsys,
           "other.h5 has no block 'a'", out)
    _fails(["correspond", "--features", good, "--data", f"warp:{tmp_path}/none", "-q"], capsys,
           "not found", out)
    _fails(["correspond", "--features", good, "--data", "spair:" + str(tmp_path), "-q"], capsys,
           "not found", out)


def test_two_files_paired_by_id_concatenate(tmp_path, ids):
    a = _maps_file(tmp_path / "a.h5", ids, key="t10/a")
    b = _maps_file(tmp_path / "b.h5", list(reversed(ids)), key="t20/b")  # other row order
    assert main(BASE + ["--features", a, b, "--concat", "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "pck.json").read_text())
    (v,) = report["variants"]
    assert v["variant"] == "a.h5:t10/a + b.h5:t20/b"


def test_killed_run_resumes(tmp_path, monkeypatch):
    import probe
    from probe.correspondence import CorrespondOptions, features

    real, calls = features.PairImages._load, []

    def dies_after_four(self, i):
        calls.append(i)
        if len(calls) > 4:
            raise KeyboardInterrupt  # killed mid-run: whole parts stay
        return real(self, i)

    monkeypatch.setattr(features.PairImages, "_load", dies_after_four)
    kw = dict(t=10, blocks="middle_block", out=tmp_path, batch_size=2, progress=False,
              device="cpu", options=CorrespondOptions(limit=3))
    with pytest.raises(KeyboardInterrupt):
        probe.correspond("adm-fmnist", "warp:demo", **kw)
    assert not (tmp_path / "pck.json").exists()
    monkeypatch.setattr(features.PairImages, "_load", real)
    log = []
    probe.correspond("adm-fmnist", "warp:demo", log=log.append, **kw)
    assert any("resuming: 4 of 6 images already done" in line for line in log), log
    assert (tmp_path / "pck.json").exists()


def test_sd_category_prompt_is_explicit_and_recorded(tmp_path, capsys):
    """A {class} prompt takes each pair's category (labels enter the features): recorded."""
    tiny = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiny-sd")
    argv = ["correspond", "--model", "sd", "--checkpoint", tiny, "--data",
            "warp:" + os.path.join(os.path.dirname(__file__), "..", "fixtures",
                                   "imagenet_photos"),
            "--limit", "1", "--t", "261", "--blocks", "up_blocks.1", "-q", "--device", "cpu"]
    assert main(argv + ["--prompt", "a photo of a {class}", "--image-size", "64",
                        "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "pck.json").read_text())
    assert report["extraction"]["prompt"] == "a photo of a {class}"
    assert report["extraction"]["class_label"] == "true"
    assert report["image_size"] is not None
    capsys.readouterr()
    # a size Stable Diffusion cannot take is refused in one line
    assert main(argv + ["--image-size", "100", "--out", str(tmp_path / "b")]) == 2
    assert "multiple of 64" in capsys.readouterr().err


def test_precision_reaches_the_maps_and_is_not_mixed_with_fp32(tmp_path, capsys):
    """--precision bf16 extracts the maps under autocast (recorded in the file); a later fp32
    run does not reuse them: bf16 maps differ in the third digit."""
    from probe.store import open_features

    out = tmp_path / "run"
    args = ["--t", "10", "--blocks", "middle_block", "--out", str(out), "--overwrite"]
    assert main(RUN + args + ["--precision", "bf16"]) == 0
    (bf16,) = _h5(out / "features")
    with open_features(str(out / "features" / bf16)) as f:
        assert f.attrs["precision"] == "bf16"
    capsys.readouterr()
    assert main(RUN + args) == 0
    assert "reusing" not in capsys.readouterr().out
    assert len(_h5(out / "features")) == 2
