"""The same flags mean the same thing in every command."""
import argparse

import pytest

from probe.cli import build_parser, main

SELECTING = ["extract", "info", "fit", "compare", "cka", "demo"]
RUNNING = ["extract", "fit", "compare", "cka", "demo", "train ldae", "train dit", "train adm"]
RUN_FLAGS = ["--quiet", "--device", "--threads", "--seed", "--out", "--overwrite"]


def _parser(command):
    p = build_parser()
    for word in command.split():
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[word]
    return p


def _options(p):
    return {s: a for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize("command", SELECTING)
def test_every_command_that_reads_features_selects_the_same_way(command):
    opts = _options(_parser(command))
    for flag in ("--t", "--blocks", "--block"):
        assert flag in opts, f"{command} lacks {flag}"
        assert isinstance(opts[flag], argparse._AppendAction)  # repeats add up
    assert opts["--block"].dest == opts["--blocks"].dest  # the old spelling is an alias


@pytest.mark.parametrize("command", RUNNING)
def test_run_flags_are_everywhere_with_one_meaning(command):
    opts = _options(_parser(command))
    reference = _options(_parser("fit"))
    for flag in RUN_FLAGS:
        assert flag in opts, f"{command} lacks {flag}"
        a, b = opts[flag], reference[flag]
        assert (a.dest, a.type, type(a)) == (b.dest, b.type, type(b)), flag
    if command != "cka":  # its batches are the minibatch estimator's: --minibatch
        assert "--batch-size" in opts and opts["--batch-size"].type is int


def test_old_spellings_still_parse():
    p = build_parser()
    a = p.parse_args(["fit", "x.h5", "--no-progress", "--block", "2", "--t", "10"])
    assert a.quiet and a.blocks == ["2"] and a.t == ["10"]
    a = p.parse_args(["extract", "--model", "m", "--noise-seed", "3"])
    assert a.seed == 3
    assert p.parse_args(["extract", "--model", "m"]).seed == 0


def test_threads_is_applied_before_the_command(monkeypatch, tmp_path, capsys):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["info", str(tmp_path / "none.h5")]) == 2  # info takes no --threads
    assert main(["fit", str(tmp_path / "none.h5"), "--threads", "1"]) == 2
    assert calls == [1]
    assert main(["fit", str(tmp_path / "none.h5"), "--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err


def test_a_block_id_names_the_same_block_in_every_command(tmp_path, capsys):
    """The reported bug: `extract --blocks 2` then `fit --blocks 2` said the file had no
    block 2.  Ids count in the model's block list, whatever subset the file holds."""
    import json

    import probe

    names = probe.load_model("ldae-fmnist").block_names
    tr, te = str(tmp_path / "tr.h5"), str(tmp_path / "te.h5")
    for split, out in (("train", tr), ("test", te)):
        assert main(["extract", "--model", "ldae-fmnist", "--t", "10", "--blocks", "2,4",
                     "--limit", "40", "--split", split, "--out", out, "--quiet"]) == 0
    with probe.open_features(tr) as f:
        assert f.blocks == [names[1], names[3]]  # ids 2 and 4 of the model, in forward order
    res = str(tmp_path / "fit.json")
    assert main(["fit", tr, "--test", te, "--t", "10", "--blocks", "4", "--epochs", "1",
                 "--quiet", "--out", res]) == 0
    assert json.load(open(res))["block"] == names[3]
    capsys.readouterr()
    assert main(["info", tr, "--blocks", "2"]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    t")]
    assert shown == [f"    t10/{names[1]}: (40, 128) float32  (block 2)"]
    assert main(["cka", tr, "--keys", "t10/4", "t10/2", "--out", str(tmp_path / "c.png"),
                 "--quiet"]) == 0
    assert json.load(open(tmp_path / "c.json"))["rows"] == [f"t10/{names[1]}", f"t10/{names[3]}"]
