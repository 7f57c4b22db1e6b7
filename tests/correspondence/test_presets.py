"""The presets fill DIFT's settings (docs/correspond.md cites each in DIFT's code)."""
import pytest

import probe
from probe.correspondence import run as run_module
from probe.errors import ProbeError


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake(model, data, t, blocks, keys, out, **kw):
        seen.update(model=model, t=t, blocks=blocks, **kw)
        return {}

    monkeypatch.setattr(run_module, "run_correspond", fake)
    return seen


def test_dift_sd(captured):
    probe.correspond(data="spair:X", preset="dift-sd")
    o = captured["options"]
    assert (captured["model"], captured["t"], captured["blocks"]) == ("sd-2.1", 261, "up_blocks.1")
    assert (o.image_size, o.ensemble) == (768, 8)
    assert captured["model_kwargs"]["prompt"] == "a photo of a {class}"


def test_dift_adm_with_another_model_and_t(captured):
    probe.correspond("adm-fmnist", data="spair:X", preset="dift-adm", t=51)
    o = captured["options"]
    assert (captured["model"], captured["t"], captured["blocks"]) == ("adm-fmnist", 51,
                                                                     "output_blocks.4")
    assert (o.image_size, o.ensemble) == (512, 8)
    assert "prompt" not in captured["model_kwargs"]


def test_unknown_preset():
    with pytest.raises(ProbeError, match="unknown preset"):
        probe.correspond(data="spair:X", preset="dift")


def test_sd21_registry_entry_is_dift_model():
    from probe.extractors.registry import MODELS
    from probe.extractors.sd.load import ARCHITECTURES

    assert MODELS["sd-2.1"]["hub"] == "stabilityai/stable-diffusion-2-1"
    assert MODELS["sd-2.1"]["image_size"] == 768 == ARCHITECTURES["sd-2.1"]["sample_size"] * 8
