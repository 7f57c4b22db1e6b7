"""The sd family from the command line, offline, and its one-line errors for bad input."""
import json
import shutil
import time
from pathlib import Path

import h5py
import pytest
import torch

import probe
from probe.cli import main
from probe.errors import ProbeError
from tolerances import assert_close_net

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-sd"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub traffic and an empty hub cache, whatever the machine."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def extract(tmp_path, *extra):
    out = tmp_path / "sd.h5"
    code = main(["extract", "--model", "sd", "--checkpoint", str(TINY), "--t", "261",
                 "--blocks", "up_blocks.1", "--limit", "4", "--batch-size", "4", "--quiet",
                 "--threads", "1", "--out", str(out), *extra])
    return code, out


def test_cli_extract_on_a_saved_folder_offline(offline, tmp_path):
    from probe.data import load_dataset
    from probe.pipeline.noise import per_sample_noise

    code, out = extract(tmp_path)
    assert code == 0
    with h5py.File(out, "r") as f:
        got = torch.from_numpy(f["features/t261/up_blocks.1"][:])
        info = json.loads(f.attrs["model_info"])
        ids = [s.decode() for s in f["ids"][:]]
    assert info["conditioning"]["prompt"] == "" and info["schedule"]["kind"] == "scaled_linear"
    # the same features by hand: the model's VAE, the noise of each sample id, the U-Net
    model = probe.load_model("sd", checkpoint=str(TINY))
    data = load_dataset("demo", "train", model.image_size, model.image_channels)
    x0 = model.prepare(torch.stack([data[i][0] for i in range(4)]))
    noise = per_sample_noise(x0.shape[1:], 0, ids, 261, 0)
    xt = model.q_sample(x0, 261, noise)
    want = model.forward_intermediates(xt, 261, ["up_blocks.1"])["up_blocks.1"].mean((2, 3))
    assert_close_net(got, want)


def test_cli_class_prompt_needs_an_explicit_label_choice(tmp_path, capsys):
    code, out = extract(tmp_path, "--prompt", "a photo of a {class}")
    assert code == 2 and not out.exists()
    assert "--true-labels" in capsys.readouterr().err
    code, out = extract(tmp_path, "--prompt", "a photo of a {class}", "--true-labels")
    assert code == 0
    with h5py.File(out, "r") as f:
        info = json.loads(f.attrs["model_info"])
        names = [s.decode() for s in f["class_names"][:]]
        assert f.attrs["class_label"] == "true"
    assert info["conditioning"]["class_names"] == names
    assert info["conditioning"]["embedding_shape"][0] == len(names)


def test_fixed_prompt_refuses_labels(tmp_path, capsys):
    assert extract(tmp_path, "--true-labels")[0] == 2
    assert "no {class}" in capsys.readouterr().err


def copy_without(tmp_path, part):
    folder = tmp_path / "pipe"
    shutil.copytree(TINY, folder)
    shutil.rmtree(folder / part)
    return folder


@pytest.mark.parametrize("part", ["text_encoder", "tokenizer", "scheduler"])
def test_a_missing_part_is_named(tmp_path, part):
    with pytest.raises(ProbeError, match=f"has no {part}/"):
        probe.load_model("sd", checkpoint=str(copy_without(tmp_path, part)))


def test_a_part_without_weights_is_named(tmp_path):
    folder = copy_without(tmp_path, "vae")
    (folder / "vae").mkdir()
    shutil.copy(TINY / "vae" / "config.json", folder / "vae")
    with pytest.raises(ProbeError, match=r"cannot load the vae of .*\(vae/\)"):
        probe.load_model("sd", checkpoint=str(folder))


@pytest.mark.parametrize("index,what", [
    ({"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "x"]},
     "SDXL.*use the sdxl family"),
    ({"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "x"]},
     "SD3.*not supported yet"),
])
def test_sdxl_and_sd3_are_refused_by_sd(tmp_path, index, what):
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ProbeError, match=what):
        probe.load_model("sd", checkpoint=str(folder))


def test_hub_id_offline_fails_fast_with_the_one_line_error(offline):
    start = time.monotonic()
    with pytest.raises(ProbeError) as err:
        probe.load_model("sd-1.5")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "--checkpoint PATH" in message


def test_single_file_offline_says_what_it_needs(offline, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
              str(path))
    with pytest.raises(ProbeError, match="single-file.*offline.*--checkpoint FOLDER"):
        probe.load_model("sd", checkpoint=str(path))


def test_registry_name_refuses_another_architecture():
    with pytest.raises(ProbeError, match="does not fit sd-1.5.*--model sd"):
        probe.load_model("sd-1.5", checkpoint=str(TINY))


def test_without_transformers_one_line_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ProbeError, match=r"pip install probe-diffusion\[sd\]"):
        probe.load_model("sd", checkpoint=str(TINY))


def test_ensemble_averages_noise_draws_as_dift_does(tmp_path):
    """DIFT repeats the image K times in one batch, each copy with its own noise, and
    averages the block output over the copies; --ensemble K --stack-t does the same."""
    from probe.data import load_dataset
    from probe.pipeline.noise import per_sample_noise

    model = probe.load_model("sd", checkpoint=str(TINY))
    out = probe.extract(model, "demo", t=261, blocks="up_blocks.1", pool="none", ensemble=3,
                        stack_t=True, limit=1, out=tmp_path / "e.h5", progress=False,
                        log=lambda _: None)
    with h5py.File(out, "r") as f:
        got = torch.from_numpy(f["features/t261/up_blocks.1"][:])
        ids = [s.decode() for s in f["ids"][:]]
    data = load_dataset("demo", "train", model.image_size, model.image_channels)
    x0 = model.prepare(data[0][0][None]).repeat(3, 1, 1, 1)
    noise = torch.cat([per_sample_noise(x0.shape[1:], 0, ids, 261, k) for k in range(3)])
    feats = model.forward_intermediates(model.q_sample(x0, 261, noise), 261, ["up_blocks.1"])
    assert_close_net(got, feats["up_blocks.1"].mean(0, keepdim=True))
