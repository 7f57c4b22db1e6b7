"""The shared option objects (probe.options): objects and keywords mean the same, the CLI
builds them from the shared flags, bad values are one-line errors."""
import argparse

import numpy as np
import pytest

import probe
from probe.cli.common import output_options, run_options
from probe.errors import ProbeError
from probe.options import NoiseOptions, OutputOptions, RunOptions, Selection, gather
from probe.store import write_features


@pytest.fixture
def path(tmp_path):
    rng = np.random.default_rng(0)
    feats = {(t, b): rng.standard_normal((30, 5)) for t in (1, 2) for b in ("x", "y")}
    return write_features(tmp_path / "f.h5", feats, labels=np.zeros(30, int),
                          ids=[f"s{i}" for i in range(30)])


def test_measures_take_selections_or_keywords(path):
    by_kw = probe.cka(path, t=1, blocks="x,y", keys_b=["t2/y"], device="cpu", progress=False)
    by_obj = probe.cka(path, rows=Selection(t=1, blocks="x,y"), cols=Selection(keys=["t2/y"]),
                       run=RunOptions(device="cpu", progress=False))
    assert by_kw.rows == by_obj.rows == [(1, "x"), (1, "y")] and by_kw.cols == [(2, "y")]
    np.testing.assert_array_equal(by_kw.matrix, by_obj.matrix)
    sim = probe.similarity(path, metric="cka", rows=Selection(keys="t1/x"), keys_b="t2/x",
                           progress=False)
    assert sim.rows == [(1, "x")] and sim.cols == [(2, "x")]


@pytest.mark.parametrize("kw, message", [
    (dict(blcks="x"), "did you mean blocks"),
    (dict(device="gpu"), "bad --device"),
    (dict(threads=0), "--threads must be a positive integer"),
])
def test_measure_options_are_checked(path, kw, message):
    with pytest.raises(ProbeError, match=message):
        probe.cka(path, progress=False, **kw)


def test_objects_are_frozen_and_gather_replaces_fields():
    base = NoiseOptions(t=[10], noise_seed=1)
    with pytest.raises(AttributeError):
        base.noise_seed = 2
    kwargs = {"noise_seed": 2, "checkpoint": "x.pt"}
    got = gather(NoiseOptions, base, kwargs)
    assert got == NoiseOptions(t=[10], noise_seed=2) and kwargs == {"checkpoint": "x.pt"}
    assert base.noise_seed == 1  # the caller's object is not changed
    assert RunOptions().with_defaults(batch_size=32, device="cpu") == RunOptions(
        batch_size=32, device="cpu")
    assert RunOptions(batch_size=8).with_defaults(batch_size=32).batch_size == 8


def test_the_cli_builds_the_objects_from_the_shared_flags():
    args = argparse.Namespace(device="cpu", threads=2, batch_size=16, num_workers=1, quiet=True,
                              out="o.h5", overwrite=True, dtype="float16")
    assert run_options(args) == RunOptions(device="cpu", threads=2, batch_size=16,
                                           num_workers=1, progress=False)
    assert output_options(args) == OutputOptions(out="o.h5", overwrite=True, dtype="float16")
    # a command without a flag keeps the dataclass's default
    assert run_options(argparse.Namespace()) == RunOptions()
    assert output_options(argparse.Namespace(out="x")) == OutputOptions(out="x")


def test_train_classifier_refuses_what_does_not_apply(tmp_path):
    from probe.train.classifier import train_classifier

    with pytest.raises(ProbeError, match="batch_size is the optimizer's"):
        train_classifier("demo", str(tmp_path / "r"), run=RunOptions(batch_size=4))
    with pytest.raises(ProbeError, match="dtype does not apply"):
        train_classifier("demo", str(tmp_path / "r"), dtype="float16")
    with pytest.raises(ProbeError, match="did you mean num_workers"):
        train_classifier("demo", str(tmp_path / "r"), num_worker=2)
