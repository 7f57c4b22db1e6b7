"""`probe train` killed with SIGKILL at random moments, resumed each time, ends where an
uninterrupted run ends, bit for bit."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import torch

ARGS = ["train", "ldae", "--image-size", "16", "--limit", "96", "--batch-size", "16",
        "--hidden-size", "32", "--depth", "2", "--num-heads", "2", "--pca-patches", "2000",
        "--steps", "30", "--save-every", "1", "--quiet", "--device", "cpu", "--threads", "1"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def saved_step(out):
    try:
        return json.load(open(os.path.join(out, "log.json")))["step"]
    except (OSError, ValueError, KeyError):
        return -1


def test_sigkill_at_random_moments_then_resume_matches(tmp_path):
    ref = str(tmp_path / "ref")
    subprocess.run([sys.executable, "-m", "probe", *ARGS, "--out", ref], env=ENV, check=True)
    out = str(tmp_path / "killed")
    rng = random.Random(7)
    kills, resume = 0, []
    # Kill points follow the run's own saved progress (30 steps, a checkpoint after each),
    # each followed by a random few ms so the kill can land inside a checkpoint write.
    for target in sorted(rng.sample(range(1, 29), 3)):
        p = subprocess.Popen([sys.executable, "-m", "probe", *ARGS, "--out", out, *resume],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and saved_step(out) < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        resume = ["--resume"]
    assert kills >= 2
    r = subprocess.run([sys.executable, "-m", "probe", *ARGS, "--out", out, "--resume"],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not [f for f in os.listdir(out) if ".tmp-" in f]
    a = torch.load(os.path.join(ref, "model.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(out, "model.pt"), weights_only=True)["model"]
    # exact: resume after SIGKILL on the same machine, same kernels
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (json.load(open(os.path.join(d, "log.json"))) for d in (ref, out))
    assert la["final_loss"] == lb["final_loss"] and lb["step"] == 30
