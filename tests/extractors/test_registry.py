import json
import os
import re

import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from probe.extractors.registry import ALIASES, MODELS
from refdata import REFERENCE

TINY_DIT = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2,
                num_classes=0, learn_sigma=False)


def test_random_init_is_seeded_not_global_rng():
    a = probe.load_model("dit", random_init=True, **TINY_DIT)
    torch.manual_seed(123)
    b = probe.load_model("dit", random_init=True, **TINY_DIT)
    c = probe.load_model("dit", random_init=True, init_seed=1, **TINY_DIT)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name, message", [
    ("dit-xl2", "did you mean dit-xl-2"), ("adm256", "did you mean"), ("nonsense", "probe models")])
def test_unknown_names_suggest(name, message):
    with pytest.raises(ProbeError, match=message):
        probe.load_model(name)


def test_models_without_released_weights_say_so():
    with pytest.raises(ProbeError, match="no released weights"):
        probe.load_model("dit-l", vae=None)
    with pytest.raises(ProbeError, match="not both"):
        probe.load_model("adm-64", checkpoint="x.pt", random_init=True)


def test_probe_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list(MODELS) + list(ALIASES):
        assert name in out


def test_probe_blocks_matches_the_released_manifest(capsys):
    assert main(["blocks", "adm-256-uncond"]) == 0
    rows = {m.group(2): (int(m.group(1)), m.group(3)) for m in
            re.finditer(r"^\s*(\d+)\s+(\S+)\s+(\(.*\))$", capsys.readouterr().out, re.M)}
    assert len(rows) == 37 and rows["output_blocks.4"][0] == 24 and rows["middle_block"][0] == 19
    with open(os.path.join(REFERENCE, "manifests", "adm_256x256_diffusion_uncond.json")) as fh:
        sd = json.load(fh)["state_dict"]
    # a block's output channels are those of its last conv in the released checkpoint
    channels = sd["output_blocks.4.0.out_layers.3.weight"][0]
    assert rows["output_blocks.4"][1] == f"({channels}, 16, 16)"
    assert main(["blocks", "dit-xl-2"]) == 0
    out = capsys.readouterr().out
    hidden = json.load(open(os.path.join(REFERENCE, "manifests", "DiT-XL-2-256x256.json")))[
        "state_dict"]["blocks.27.attn.proj.weight"][0]
    assert f"blocks.27            (256, {hidden})" in out
