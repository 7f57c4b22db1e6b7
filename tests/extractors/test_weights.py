"""The one weights loader (probe/extractors/weights.py): every family reaches the hub and
reads checkpoints through it, so offline every family fails with the same one-line
error, and a checkpoint is read the same way whatever the family."""
import huggingface_hub
import pytest
import torch

import probe
from probe.errors import ProbeError
from probe.extractors import weights


@pytest.fixture
def hub_offline(monkeypatch):
    calls = []

    def offline(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("allow_patterns")))
        raise ConnectionError("Name or service not known\nretrying ...")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    return calls


@pytest.mark.parametrize("load, repo", [
    (lambda: probe.load_model("dit", checkpoint="facebook/DiT-XL-2-256"), "facebook/DiT-XL-2-256"),
    (lambda: probe.load_model("sd", checkpoint="some-org/some-sd"), "some-org/some-sd"),
    (lambda: probe.load_model("timm:vit_small_patch14_dinov2"), "timm/vit_small_patch14_dinov2"),
])
def test_every_family_goes_to_the_hub_through_hub_snapshot(hub_offline, load, repo):
    with pytest.raises(ProbeError, match=r"could not fetch weights from .*Name or service not "
                                         r"known\): download them .*--checkpoint PATH") as e:
        load()
    assert "\n" not in str(e.value)
    assert hub_offline and hub_offline[0][0].startswith(repo) and hub_offline[0][1]


def test_a_vae_from_the_hub_says_what_to_pass_instead(hub_offline):
    with pytest.raises(ProbeError, match=r"could not load the VAE some-org/vae .*--vae random"):
        probe.load_model("dit", random_init=True, input_size=8, depth=1, hidden_size=32,
                         num_heads=2, vae="some-org/vae")


def test_fetched_passes_probe_errors_and_names_the_source_of_others():
    with pytest.raises(ProbeError, match="mine"):
        weights.fetched(lambda: (_ for _ in ()).throw(ProbeError("mine")), "x")
    with pytest.raises(ProbeError, match=r"could not fetch weights from the hub \(404\)"):
        weights.fetched(lambda: (_ for _ in ()).throw(OSError("404\nbody")), "the hub")
    assert weights.fetched(lambda: 3, "x") == 3


def test_read_takes_a_state_dict_a_file_or_a_url(tmp_path, monkeypatch):
    state = {"w": torch.ones(2)}
    path = tmp_path / "w.pt"
    torch.save({"ema": state}, path)
    assert weights.read(state) == (state, "state dict")
    got, source = weights.read_state_dict(str(path))
    assert source == str(path) and torch.equal(got["w"], state["w"])
    with pytest.raises(ProbeError, match=r"checkpoint not found: nope.pt \(give a local"):
        weights.read("nope.pt")
    with pytest.raises(ProbeError, match=r"is a folder, not a checkpoint file \(give a local"):
        weights.read(str(tmp_path))

    def no_network(url, **kwargs):
        raise ConnectionError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ProbeError, match=r"could not fetch weights from https://x/w.pt "
                                         r"\(Temporary failure"):
        weights.read("https://x/w.pt")


def test_no_released_weights_names_the_model_or_the_family():
    with pytest.raises(ProbeError, match=r"^dit-b-2 has no released weights: pass a checkpoint "
                                         r"\(--checkpoint PATH, API checkpoint=\.\.\.: a DiT"):
        probe.load_model("dit-b-2", vae=None)
    for family in ("dit", "adm", "ldae"):
        with pytest.raises(ProbeError, match=f"^the {family} family has no released weights: "
                                             ".*--random-init"):
            probe.load_model(family)


def test_first_line():
    assert weights.first_line(ValueError("one\ntwo")) == "one"
    assert weights.first_line(KeyError()) == "KeyError"
