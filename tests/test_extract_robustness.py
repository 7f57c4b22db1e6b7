"""Kill-safety (SIGKILL at random moments, then resume) and 2-rank distributed extraction."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from probe.store import open_features
from refdata import reference_checkpoint, reference_config

FLAGS = ["--model", "adm", "--checkpoint", reference_checkpoint("adm", "adm_tiny_uncond"),
         "--config", os.path.join(os.path.dirname(reference_checkpoint("adm", "adm_tiny_uncond")),
                                  "adm_tiny_uncond.json"),
         "--t", "10,300", "--blocks", "input_blocks.3,middle_block", "--pool", "avg2",
         "--quiet"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "probe", "extract", *FLAGS, *args], env=ENV,
                          capture_output=True, text=True, **kw)


def features(path):
    with open_features(str(path)) as f:
        return {k: f.load(k) for k in f.keys}, f.ids


def assert_same(a, b):
    fa, ida = features(a)
    fb, idb = features(b)
    assert ida == idb and fa.keys() == fb.keys()
    for k in fa:
        assert np.array_equal(fa[k], fb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    r = cli(["--limit", "48", "--batch-size", "4", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    return out


def test_sigkill_at_random_moments_then_resume(uninterrupted, tmp_path):
    out = tmp_path / "killed.h5"
    rng = random.Random(1234)
    kills = 0
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-m", "probe", "extract", *FLAGS, "--limit", "48",
                              "--batch-size", "4", "--out", str(out)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Start-up takes a few seconds; kill anywhere from start-up to the final merge.
        time.sleep(rng.uniform(2.0, 9.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        if out.exists():
            break
        if os.path.isdir(f"{out}.partial"):
            r = subprocess.run([sys.executable, "-m", "probe", "info", str(out)], env=ENV,
                               capture_output=True, text=True)
            assert "unfinished run" in r.stdout
    assert kills >= 1
    r = cli(["--limit", "48", "--batch-size", "4", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(f"{out}.partial") and not os.path.exists(f"{out}.tmp")
    assert_same(out, uninterrupted)


def test_two_ranks_on_gloo_match_one_process_bit_for_bit(uninterrupted, tmp_path):
    out = tmp_path / "dist.h5"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(29500 + os.getpid() % 1000), "-m", "probe",
                        "extract", *FLAGS, "--limit", "48", "--batch-size", "4", "--out", str(out)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same(out, uninterrupted)
    with open_features(str(out)) as f:
        assert f.attrs["num_samples"] == 48 and f.attrs["complete"]
