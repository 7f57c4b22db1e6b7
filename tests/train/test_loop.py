"""The shared loop: exact resume, checkpoint files, the run folder rules."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from probe.data import load_dataset
from probe.errors import ProbeError
from probe.train import loop
from probe.train.ldae import LDAEObjective, build
from tolerances import assert_close_f32

TINY = dict(image_size=16, in_channels=1, patch_size=4, hidden_size=32, depth=2, num_heads=2,
            latent_dim=4)


@pytest.fixture(scope="module")
def images():
    # 80 images, batch 32: three steps an epoch, the last one short.
    return loop.Images(load_dataset("demo", "train", 16, 1), limit=80, progress=False)


def run(images, out, resume=False, objective_hook=None, **kw):
    state = loop.prepare_out(str(out), resume, False)
    loop.seed_everything(0)
    model = build(TINY, None if state else images, pca_patches=500, seed=0)
    objective = LDAEObjective(model)
    if objective_hook:
        objective = objective_hook(objective)
    kw = dict(dict(batch_size=32, lr=1e-3, seed=0, log_every=2, progress=False,
                   run_config={"what": "tiny"}), **kw)
    return loop.train(objective, images, str(out), state=state, **kw)


def weights(out):
    return torch.load(os.path.join(out, loop.MODEL_FILE), weights_only=True)["model"]


def assert_same_run(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:  # exact: a resumed run on the same machine, same kernels
        assert torch.equal(wa[k], wb[k]), k
    la, lb = (json.load(open(os.path.join(d, loop.LOG_FILE))) for d in (a, b))
    assert [e["loss"] for e in la["loss"]] == [e["loss"] for e in lb["loss"]]
    assert [e["loss"] for e in la["epochs"]] == [e["loss"] for e in lb["epochs"]]


def test_resume_after_an_epoch_is_bit_identical(images, tmp_path):
    run(images, tmp_path / "full", epochs=2)
    run(images, tmp_path / "split", epochs=1)
    first = weights(tmp_path / "split")
    log = run(images, tmp_path / "split", resume=True, epochs=2)
    assert log["step"] == 6 and log["finished"] and len(log["sessions"]) == 2
    assert not torch.equal(first["blocks.0.attn.qkv.weight"],
                           weights(tmp_path / "split")["blocks.0.attn.qkv.weight"])
    assert_same_run(tmp_path / "full", tmp_path / "split")


def test_resume_mid_epoch_and_with_periodic_saves_is_bit_identical(images, tmp_path):
    run(images, tmp_path / "full", epochs=2)
    run(images, tmp_path / "split", steps=4, save_every=1)
    run(images, tmp_path / "split", resume=True, epochs=2)
    assert_same_run(tmp_path / "full", tmp_path / "split")


class InterruptAt:
    """Sends this process a real SIGINT during step ``at`` (as Ctrl-C would)."""

    def __init__(self, objective, at):
        self.objective, self.at, self.calls = objective, at, 0
        self.model, self.family, self.export = objective.model, objective.family, objective.export

    def loss(self, *args):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.objective.loss(*args)


def test_ctrl_c_saves_after_the_step_and_resume_matches(images, tmp_path):
    run(images, tmp_path / "full", epochs=2)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, not Python's
    with pytest.raises(KeyboardInterrupt):
        run(images, tmp_path / "split", epochs=2, objective_hook=lambda o: InterruptAt(o, 2))
    saved = loop.load_state(str(tmp_path / "split"))
    assert saved["step"] == 2  # the interrupted step finished and was saved
    assert signal.getsignal(signal.SIGINT) is before  # whatever was there is back
    run(images, tmp_path / "split", resume=True, epochs=2)
    assert_same_run(tmp_path / "full", tmp_path / "split")


def test_log_records_seed_curve_and_timing(images, tmp_path):
    log = run(images, tmp_path, epochs=2, seed=3)
    on_disk = json.load(open(tmp_path / loop.LOG_FILE))
    assert on_disk["seed"] == 3 and on_disk["run_config"]["seed"] == 3
    assert [e["step"] for e in on_disk["loss"]] == [2, 3, 4, 6]  # every 2 steps, epoch ends
    assert [e["epoch"] for e in on_disk["epochs"]] == [1, 2]
    assert on_disk["final_loss"] == log["loss"][-1]["loss"]
    assert on_disk["wall_time_s"] > 0 and all(e["images_per_s"] > 0 for e in on_disk["loss"])
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # atomic writes cleaned up


def test_steps_zero_writes_the_untrained_model_with_its_tokenizer(images, tmp_path):
    run(images, tmp_path, steps=0)
    ckpt = torch.load(tmp_path / loop.MODEL_FILE, weights_only=True)
    comps = ckpt["model"]["tokenizer.components"]
    assert not torch.equal(comps, torch.eye(16))  # the fitted basis, not the placeholder
    # stored as float32: orthonormal up to float32 sums of 16 products
    assert_close_f32(comps @ comps.T, torch.eye(16), n=16)


def test_run_folder_rules(images, tmp_path):
    with pytest.raises(ProbeError, match="nothing to resume"):
        loop.prepare_out(str(tmp_path), True, False)
    run(images, tmp_path, steps=1)
    with pytest.raises(ProbeError, match="already holds a training run"):
        loop.prepare_out(str(tmp_path), False, False)
    with pytest.raises(ProbeError, match="not both"):
        loop.prepare_out(str(tmp_path), True, True)
    with pytest.raises(ProbeError, match="started with lr=0.001, not 0.01"):
        run(images, tmp_path, resume=True, steps=2, lr=1e-2)
    assert loop.prepare_out(str(tmp_path), False, True) is None
    assert os.listdir(tmp_path) == []


def test_bad_training_options(images, tmp_path):
    with pytest.raises(ProbeError, match="--epochs or --steps"):
        run(images, tmp_path / "a", epochs=1, steps=1)
    with pytest.raises(ProbeError, match="batch-size"):
        run(images, tmp_path / "b", epochs=1, batch_size=0)
    with pytest.raises(ProbeError, match="bad --device"):
        loop.resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ProbeError, match="no CUDA device"):
            loop.resolve_device("cuda")


def test_a_diverging_loss_stops_with_advice(images, tmp_path):
    with pytest.raises(ProbeError, match="lower --lr"):
        run(images, tmp_path, steps=3, lr=1e30)


def test_half_written_checkpoints_of_dead_processes_are_cleared(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".train_state.pt.tmp-{dead.pid}.pt"
    live = tmp_path / f".model.pt.tmp-{os.getpid()}.pt"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    assert loop.prepare_out(str(tmp_path), False, False) is None
    assert not stale.exists() and live.exists()
