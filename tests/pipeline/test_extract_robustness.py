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
from refdata import reference_checkpoint

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
        assert np.array_equal(fa[k], fb[k]), k  # exact: same machine, same kernels, same batches


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    r = cli(["--limit", "48", "--batch-size", "4", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    return out


def temporary_files(folder):
    """Files being written in ``folder`` under a temporary name (probe.files.temp_name)."""
    return [n for n in os.listdir(folder) if ".tmp-" in n]


def _kill_when(p, ready, rng):
    """SIGKILL ``p`` a random few ms after ``ready()`` turns true; False if it finished first."""
    while p.poll() is None:
        if ready():
            time.sleep(rng.uniform(0.0, 0.02))
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.002)
    return False


def test_sigkill_at_random_moments_then_resume(uninterrupted, tmp_path):
    out = tmp_path / "killed.h5"
    parts = f"{out}.partial/parts"
    n_parts = lambda: len(os.listdir(parts)) if os.path.isdir(parts) else 0
    rng = random.Random(1234)
    # Kill points follow the run's own progress rather than wall-clock time, so they land
    # mid-run on a fast machine as on a slow one: after the first part, at random part counts
    # (12 batches in all), and while the parts are merged into a temporary file next to OUT.
    targets = [1, rng.randint(2, 6), rng.randint(7, 11)]
    kill_points = [lambda k=k: n_parts() >= k for k in targets]
    kill_points.append(lambda: bool(temporary_files(tmp_path)))
    kills = 0
    for ready in kill_points:
        p = subprocess.Popen([sys.executable, "-m", "probe", "extract", *FLAGS, "--limit", "48",
                              "--batch-size", "4", "--out", str(out)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills += _kill_when(p, ready, rng)
        if out.exists():
            break
        assert os.path.isdir(f"{out}.partial")
        r = subprocess.run([sys.executable, "-m", "probe", "info", str(out)], env=ENV,
                           capture_output=True, text=True)
        assert "unfinished run" in r.stdout
    assert kills >= 2
    r = cli(["--limit", "48", "--batch-size", "4", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(f"{out}.partial") and not temporary_files(tmp_path)
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


def _torchrun(out, port):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(port), "-m", "probe", "extract", *FLAGS, "--limit", "48",
            "--batch-size", "4", "--out", str(out)]


def _rank_pid(launcher_pid, rank):
    """The pid of the worker with RANK=rank among the launcher's children (Linux /proc)."""
    with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children") as fh:
        children = fh.read().split()
    for pid in children:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs Linux /proc")
def test_a_rank_that_dies_leaves_a_run_the_same_command_resumes(uninterrupted, tmp_path):
    out = tmp_path / "dist.h5"
    parts = f"{out}.partial/parts"
    port = 29500 + (os.getpid() + 7) % 1000
    launcher = subprocess.Popen(_torchrun(out, port), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    killed = False
    while launcher.poll() is None:
        if os.path.isdir(parts) and len(os.listdir(parts)) >= 2:
            pid = _rank_pid(launcher.pid, 1)
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.002)
    assert launcher.wait(timeout=300) != 0 and killed
    assert not out.exists() and os.path.isdir(f"{out}.partial")
    r = subprocess.run(_torchrun(out, port + 1), env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already done" in r.stdout + r.stderr
    assert_same(out, uninterrupted)


def test_accelerate_launch_shards_like_torchrun(uninterrupted, tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "acc.h5"
    # --multi_gpu is accelerate's torchrun-based launcher; without a GPU its ranks run on CPU
    # over gloo.  (`--cpu --num_processes N` would start one process: accelerate's multi-CPU
    # mode goes through mpirun.)
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--main_process_port",
                        str(29500 + (os.getpid() + 13) % 1000), "-m", "probe", "extract", *FLAGS,
                        "--limit", "48", "--batch-size", "4", "--out", str(out)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "on 2 ranks" in r.stdout
    assert_same(out, uninterrupted)
