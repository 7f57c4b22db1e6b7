"""`probe train` end to end on the bundled demo data."""
import json
import os

import torch

import probe
from probe.cli import main

TINY = ["--image-size", "16", "--limit", "96", "--batch-size", "32", "--quiet", "--device", "cpu"]
TINY_VIT = ["--hidden-size", "32", "--depth", "2", "--num-heads", "2"]


def test_train_ldae_writes_a_loadable_checkpoint_and_log(tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = main(["train", "ldae", *TINY, *TINY_VIT, "--latent-dim", "6", "--epochs", "2",
               "--seed", "7", "--pca-patches", "2000", "--out", out])
    assert rc == 0
    assert "model.pt" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["log.json", "model.pt", "train_state.pt"]
    log = json.load(open(os.path.join(out, "log.json")))
    assert log["seed"] == 7 and log["step"] == 6 and log["finished"]
    assert log["run_config"]["model"]["latent_dim"] == 6
    assert log["run_config"]["data"] == "demo" and log["run_config"]["split"] == "train"
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    model = probe.load_model("ldae", checkpoint=os.path.join(out, "model.pt"))
    assert model.image_channels == 1 and model.config["latent_dim"] == 6
    assert model.encoder_blocks == ["blocks.0"]
    feats = model.encode(torch.rand(2, 1, 16, 16))
    assert feats.shape == (2, 32) and torch.isfinite(feats).all()


def test_cli_resume_continues_and_matches(tmp_path):
    args = ["train", "ldae", *TINY, *TINY_VIT, "--noise", "pixel", "--target", "noise",
            "--schedule", "gamma2-linear"]
    assert main(args + ["--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--epochs", "1", "--out", str(tmp_path / "b")]) == 0
    assert main(args + ["--epochs", "2", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True)["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # a resume: same machine, same kernels


def test_cli_user_errors_exit_2(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "ldae", *TINY, *TINY_VIT, "--latent-dim", "99", "--out", out]) == 2
    assert "patch dimension" in capsys.readouterr().err
    assert main(["train", "ldae", *TINY, "--depth", "3", "--out", out]) == 2
    assert "cannot be split" in capsys.readouterr().err
    assert main(["train", "ldae", *TINY, "--image-size", "18", "--out", out]) == 2
    assert "not divisible by patch size" in capsys.readouterr().err
    assert main(["train", "ldae", *TINY, "--epochs", "1", "--steps", "2", "--out", out]) == 2
    assert main(["train", "ldae", *TINY, "--resume", "--out", out]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "ldae|dit|adm" in capsys.readouterr().err
    assert main(["train", "adm", *TINY, "--config", "num_chanels=32", "--out", out]) == 2
    assert "did you mean num_channels" in capsys.readouterr().err
    # 16 px with channel_mult 1,2 has levels of 16 and 8 px: attention "4" would be ignored
    assert main(["train", "adm", *TINY, "--config", "channel_mult=1,2", "--config",
                 "attention_resolutions=8,4", "--out", out]) == 2
    assert "no level of this U-Net is 4 px (its levels are 16, 8 px)" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "model.pt"))


def test_train_dit_and_adm_load_in_their_family_format(tmp_path):
    dit_out, adm_out = str(tmp_path / "dit"), str(tmp_path / "adm")
    assert main(["train", "dit", *TINY, *TINY_VIT, "--steps", "3", "--out", dit_out]) == 0
    assert main(["train", "adm", "--image-size", "8", "--limit", "32", "--batch-size", "16",
                 "--quiet", "--steps", "2", "--config", "num_channels=32",
                 "--config", "channel_mult=1,2", "--config", "attention_resolutions=4",
                 "--config", "num_res_blocks=1", "--out", adm_out]) == 0
    for family, out in (("dit", dit_out), ("adm", adm_out)):
        config = json.load(open(os.path.join(out, "config.json")))
        model = probe.load_model(family, checkpoint=os.path.join(out, "model.pt"), **config)
        state = torch.load(os.path.join(out, "train_state.pt"), weights_only=True)["model"]
        for k, v in model.net.state_dict().items():
            assert torch.equal(v, state["net." + k]), k  # a copy
        assert json.load(open(os.path.join(out, "log.json")))["step"] in (2, 3)


def test_train_sit_resumes_exactly_and_loads_in_the_sit_format(tmp_path, capsys):
    args = ["train", "sit", *TINY, *TINY_VIT, "--patch-size", "4"]
    assert main(args + ["--steps", "4", "--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--steps", "2", "--out", str(tmp_path / "b")]) == 0
    assert main(args + ["--steps", "4", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # SiT's format: a bare state dict
    config = json.load(open(tmp_path / "a" / "config.json"))
    assert config["convention"] == "sit"
    model = probe.load_model("sit", checkpoint=str(tmp_path / "a" / "model.pt"), **config)
    assert model.schedule.describe()["convention"] == "sit" and model.block_names[-1] == "blocks.1"
    assert main(args + ["--config", "convention=ddpm", "--out", str(tmp_path / "c")]) == 2
    assert "unknown SiT time convention" in capsys.readouterr().err
