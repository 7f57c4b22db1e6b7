"""The one selector grammar: parsing, ids against the model's block list, and that every
command reads the same words the same way."""
import h5py
import numpy as np
import pytest

from extractors.test_registry import unfold_block_list
from probe.errors import ProbeError
from probe.selection import block_list, parse_key, parse_t, resolve_blocks
from probe.store import open_features, write_features

MODEL = ["input_blocks.0", "input_blocks.1", "input_blocks.2", "middle_block",
         "output_blocks.0", "output_blocks.1", "output_blocks.2"]


@pytest.mark.parametrize("spec, want", [
    (100, [100]), ("10,100", [10, 100]), (["500", "10,100"], [10, 100, 500]),
    ([100, 100, 10], [10, 100]), ("t10", [10]), ("all", None), (None, None), (["10", "all"], None),
    # continuous t (SiT, REPA): floats stay floats; integral values are ints, as DDPM steps
    ("0.1,0.5", [0.1, 0.5]), (0.25, [0.25]), ("t0.5", [0.5]), ("1.0,0", [0, 1]), ("1e-3", [0.001]),
])
def test_parse_t(spec, want):
    assert parse_t(spec) == want


@pytest.mark.parametrize("spec", ["x", "1.5.2", "0,5x", "3-", [True], ","])
def test_parse_t_refuses(spec):
    with pytest.raises(ProbeError, match="--t"):
        parse_t(spec)


def test_blocks_by_name_id_comma_repeat_and_all():
    # ids are 1-based positions in the model's forward order (MODEL[3] is id 4)
    assert resolve_blocks("4", MODEL, "m", "h") == ["middle_block"]
    assert resolve_blocks(4, MODEL, "m", "h") == ["middle_block"]
    assert resolve_blocks(np.int64(1), MODEL, "m", "h") == ["input_blocks.0"]
    assert resolve_blocks(["7,middle_block", "2"], MODEL, "m", "h") == [
        "output_blocks.2", "middle_block", "input_blocks.1"]
    assert resolve_blocks("4,middle_block", MODEL, "m", "h") == ["middle_block"]  # no repeats
    assert resolve_blocks("all", MODEL, "m", "h") == MODEL
    assert resolve_blocks(None, MODEL, "m", "h") == MODEL


def test_block_errors_list_what_exists():
    with pytest.raises(ProbeError) as e:
        resolve_blocks("8", MODEL, "adm-x", "see `probe blocks adm-x`")
    msg = str(e.value)
    assert "block id 8 is out of range: adm-x has blocks 1..7" in msg
    assert "input_blocks.0..2 (ids 1-3), middle_block (4), output_blocks.0..2 (ids 5-7)" in msg
    with pytest.raises(ProbeError, match="did you mean middle_block"):
        resolve_blocks("midle_block", MODEL, "m", "h")
    with pytest.raises(ProbeError, match="no blocks given"):
        resolve_blocks([], MODEL, "m", "h")


def test_block_list_folds_runs_and_numbers_every_name():
    names = ["conv_in", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "norm", "head.0", "head.1"]
    listed = block_list(names)
    assert listed == "conv_in (1), blocks.0..3 (ids 2-5), norm (6), head.0 (7), head.1 (8)"
    assert unfold_block_list(listed) == names  # every name, each id its position


def test_float_t_round_trips_through_labels_and_files(tmp_path):
    from probe.selection import key_label, t_text

    for t in (0.1, 0.05, 1e-05, 0.3333333333333333, 0.5):
        assert parse_key(key_label((t, "blocks.1"))) == (t, "blocks.1")
        assert float(t_text(t)) == t  # the label is exact: no two t share one
    assert key_label((100, "b")) == "t100/b" and key_label((1.0, "b")) == "t1/b"
    feats = {(0.1, "blocks.1"): np.ones((2, 3)), (0.5, "blocks.1"): np.zeros((2, 3))}
    path = write_features(str(tmp_path / "f.h5"), feats, labels=[0, 1])
    with open_features(path) as f:
        assert f.keys == [(0.1, "blocks.1"), (0.5, "blocks.1")] and f.timesteps == [0.1, 0.5]
        assert f.select(t="0.5") == [(0.5, "blocks.1")] and f.select(keys="t0.1") == [
            (0.1, "blocks.1")]
        np.testing.assert_array_equal(f.load("t0.1/blocks.1"), np.ones((2, 3)))
        with pytest.raises(ProbeError, match="t in 0.1, 0.5"):
            f.select(t="0.2")


def test_parse_key():
    assert parse_key("t100/output_blocks.4") == (100, "output_blocks.4")
    assert parse_key((100, "mid")) == (100, "mid")
    for bad in ("100/b.0", "t10", "tx/b"):
        with pytest.raises(ProbeError, match="expected tT/BLOCK"):
            parse_key(bad)


@pytest.fixture
def subset(tmp_path):
    """A file holding blocks 2 and 4 of MODEL at t=10 and 100, and block 7 at t=100 only."""
    keys = [(10, "input_blocks.1"), (10, "middle_block"), (100, "input_blocks.1"),
            (100, "middle_block"), (100, "output_blocks.2")]
    feats = {k: np.random.default_rng(i).normal(size=(6, 3)) for i, k in enumerate(keys)}
    path = str(tmp_path / "f.h5")
    write_features(path, feats, labels=np.arange(6) % 2, attrs={"model_blocks": MODEL})
    return path


def test_select_by_ids_counts_in_the_models_list(subset):
    with open_features(subset) as f:
        assert f.model_blocks == MODEL
        assert f.select(blocks="2") == [(10, "input_blocks.1"), (100, "input_blocks.1")]
        assert f.select(t=100, blocks=["7", "middle_block"]) == [
            (100, "middle_block"), (100, "output_blocks.2")]
        assert f.select(t="10") == [(10, "input_blocks.1"), (10, "middle_block")]
        assert f.select() == f.keys
        # keys: tT/BLOCK with a name or an id, tT, BLOCK; returned in file order
        assert f.select(keys="t100/7,t10/input_blocks.1") == [
            (10, "input_blocks.1"), (100, "output_blocks.2")]
        assert f.select(keys=["t10"]) == [(10, "input_blocks.1"), (10, "middle_block")]
        assert f.select(keys=["4"]) == [(10, "middle_block"), (100, "middle_block")]
        assert f.key("t100/4") == (100, "middle_block")


def test_select_errors_say_what_exists(subset):
    with open_features(subset) as f:
        with pytest.raises(ProbeError, match=r"no features of block input_blocks.0 \(id 1\); "
                                              r"it holds input_blocks.1 \(2\), middle_block \(4\)"):
            f.select(blocks="1")
        with pytest.raises(ProbeError, match="no features at t=5; it has t in 10, 100"):
            f.select(t=5)
        with pytest.raises(ProbeError, match="no features for t=10, block output_blocks.2"):
            f.select(t=10, blocks="7")
        with pytest.raises(ProbeError, match="either --keys or --t/--blocks"):
            f.select(t=10, keys="t10")
        with pytest.raises(ProbeError, match="has 2 .t, block. keys for this selection"):
            f.catalog.one(t=10)
        assert f.catalog.one(t=10, blocks=4) == (10, "middle_block")
        assert f.catalog.one(blocks="7") == (100, "output_blocks.2")


def test_a_file_without_the_models_list_refuses_ids(tmp_path, subset):
    old = str(tmp_path / "old.h5")
    with open(subset, "rb") as a, open(old, "wb") as b:
        b.write(a.read())
    with h5py.File(old, "r+") as h:
        del h.attrs["model_blocks"]  # as written before the list was recorded
    with open_features(old) as f:
        assert f.select(blocks="middle_block") == [(10, "middle_block"), (100, "middle_block")]
        with pytest.raises(ProbeError, match="does not record its model's block list"):
            f.select(blocks="2")
