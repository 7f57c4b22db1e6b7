"""One grammar for the families' arguments: every family accepts and rejects the same
spellings, and `probe extract`, `probe blocks` and `probe train` read --config alike."""
import json

import pytest

from probe.cli import main
from probe.errors import ProbeError
from probe.extractors.adm import extractor as adm
from probe.extractors.dit import extractor as dit
from probe.extractors.ldae import extractor as ldae
from probe.extractors.config import parse_config_items

# Each family's own entry point, typing one boolean and one integer argument.
BOOLEAN = {
    "dit": lambda v: dit.resolve_config({"learn_sigma": v})["learn_sigma"],
    "adm": lambda v: adm.resolve_flags({"class_cond": v})["class_cond"],
}
LDAE = dict(image_size=16, in_channels=1, patch_size=4, hidden_size=32, num_heads=2)
INTEGER = {
    "dit": lambda v: dit.resolve_config({"depth": v})["depth"],
    "adm": lambda v: adm.resolve_flags({"num_res_blocks": v})["num_res_blocks"],
    "ldae": lambda v: ldae.validate_config(dict(LDAE, depth=v))["depth"],
}
YES = [True, 1, "true", "True", "TRUE", "1", "yes", "Yes", "y", "Y", "t", "T", " true "]
NO = [False, 0, "false", "False", "0", "no", "NO", "n", "f", "F"]
NOT_BOOLEAN = ["maybe", "2", 2, "", "on", "off", "tru", "none", 1.0, None, [True]]


@pytest.mark.parametrize("family", BOOLEAN)
def test_every_family_reads_the_same_booleans(family):
    read = BOOLEAN[family]
    assert [read(v) for v in YES] == [True] * len(YES)
    assert [read(v) for v in NO] == [False] * len(NO)


@pytest.mark.parametrize("family", BOOLEAN)
@pytest.mark.parametrize("value", NOT_BOOLEAN)
def test_every_family_rejects_the_same_non_booleans(family, value):
    with pytest.raises(ProbeError) as err:
        BOOLEAN[family](value)
    msg = str(err.value)
    assert "\n" not in msg and f"={value!r}" in msg
    assert "true/false, 1/0, yes/no, t/f, y/n, any case" in msg


@pytest.mark.parametrize("family", INTEGER)
def test_every_family_reads_the_same_integers(family):
    read = INTEGER[family]
    assert [read(v) for v in (4, "4", " 4 ", 4.0, "4.0", "+4")] == [4] * 6


@pytest.mark.parametrize("family", INTEGER)
@pytest.mark.parametrize("value", ["4.5", 4.5, "four", "", True, [4], "0x4"])
def test_every_family_rejects_the_same_non_integers(family, value):
    with pytest.raises(ProbeError, match=r"(depth|num_res_blocks)=.* should be an integer$") \
            as err:
        INTEGER[family](value)
    assert "\n" not in str(err.value)


def test_config_items_are_json_values_or_text_and_later_ones_win(tmp_path):
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"depth": 2, "channel_mult": "1,2", "learn_sigma": False}))
    items = ["depth=8", " lr = 1e-3", "mult=[1, 2]", "schedule=cosine", "channel_mult=1,2,4",
             "cond=True", "none=null", str(path), "depth=6"]
    assert parse_config_items(items) == {
        "depth": 6, "lr": 1e-3, "mult": [1, 2], "schedule": "cosine", "channel_mult": "1,2",
        "cond": True, "none": None, "learn_sigma": False}


@pytest.mark.parametrize("item, message", [
    ("depth", "bad --config 'depth': use KEY=VALUE"),
    ("=4", "bad --config '=4': use KEY=VALUE"),
    ("missing.json", "cannot read --config file missing.json: No such file"),
    ("broken.json", "broken.json is not valid JSON"),
    ("list.json", "list.json holds a JSON list, not an object"),
])
def test_bad_config_items_are_one_line_errors(tmp_path, monkeypatch, item, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.json").write_text('{"depth": 2,')
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ProbeError, match=message) as err:
        parse_config_items([item])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [
    ["blocks", "dit", "--config", "depth"],
    ["blocks", "adm", "--config", "class_cond=maybe"],
    ["train", "dit", "--config", "depth", "--steps", "1"],
    ["train", "ldae", "--config", "depth=four", "--steps", "1"],
])
def test_cli_config_errors_exit_2_with_one_line(argv, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path / "run")] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe: error:") and "\n" not in err
    assert "--config" in err or "should be" in err


def test_sd_reads_off_with_the_boolean_spellings():
    from probe.extractors.config import FALSE
    from probe.extractors.sd.extractor import _options

    for off in (None, *FALSE, *(v.upper() for v in FALSE), False, 0):
        assert _options({"attention_slice": off})["attention_slice"] is None, off
    assert [_options({"attention_slice": v})["attention_slice"] for v in ("auto", "max", "4", 2)] \
        == ["auto", "max", 4, 2]
    for bad in ("off", "none", "", "-1", "1.5", "lots"):
        with pytest.raises(ProbeError, match="bad attention_slice .* or false"):
            _options({"attention_slice": bad})


@pytest.mark.parametrize("read, what", [
    (lambda c: dit.resolve_config(c), "DiT argument"),
    (lambda c: adm.resolve_flags(c), "ADM flag"),
    (lambda c: ldae.validate_config(c), "ldae option"),
    (lambda c: __import__("probe.extractors.sd.extractor", fromlist=["_"])._options(c),
     "sd option"),
])
def test_every_family_refuses_an_unknown_key_alike(read, what):
    key = {"DiT argument": "dpeth", "ADM flag": "num_channel", "ldae option": "dpeth",
           "sd option": "promt"}[what]
    with pytest.raises(ProbeError, match=rf"^unknown {what} '{key}' \(did you mean [\w, ]+\?\); ") \
            as err:
        read({key: 1})
    assert "\n" not in str(err.value)
