"""probe.files (writes that land whole or not at all) and probe.device (one device rule)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from probe import files
from probe.device import resolve_device
from probe.errors import ProbeError


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with files.atomic_write(path) as fh:
            fh.write("new, but only half of i")
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_write_that_succeeds_replaces_the_file(tmp_path):
    path = tmp_path / "result.bin"
    path.write_bytes(b"old")
    with files.atomic_write(path, "wb", fsync=True) as fh:
        fh.write(b"new")
        assert path.read_bytes() == b"old"  # nothing shows before the block ends
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["result.bin"]


def test_atomic_path_keeps_the_extension_for_writers_that_go_by_it(tmp_path):
    with files.atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "w").close()
    assert os.listdir(tmp_path) == ["plot.png"]


def test_json_round_trips(tmp_path):
    obj = {"top1": 0.5, "keys": [[10, "blocks.1"]], "note": "ünïcode", "none": None}
    path = tmp_path / "sub" / "out.json"  # the folder is created
    assert files.atomic_json(obj, path) == str(path)
    assert json.loads(path.read_text()) == obj
    assert path.read_text().endswith("\n")


def test_torch_save_round_trips(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
    files.atomic_torch_save(obj, tmp_path / "ckpt.pt")
    back = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert back["step"] == 7 and torch.equal(back["w"], obj["w"])  # a copy


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.h5.tmp-{dead.pid}.h5"  # the name a killed writer of out.h5 left
    other = tmp_path / f".log.json.tmp-{dead.pid}.json"
    live = tmp_path / f".out.h5.tmp-{os.getpid()}.h5"
    for p in (stale, other, live, tmp_path / "out.h5"):
        p.write_bytes(b"x")
    assert files.remove_stale_temps(tmp_path, tmp_path / "out.h5") == [str(stale)]
    assert other.exists() and live.exists() and (tmp_path / "out.h5").exists()
    assert files.remove_stale_temps(tmp_path) == [str(other)]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "out.h5"])


def test_auto_and_none_pick_cuda_only_when_there_is_a_gpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == want
    assert resolve_device("auto").type == want
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_one_line_of_advice(device):
    with pytest.raises(ProbeError, match="no CUDA device.*--device cpu") as e:
        resolve_device(device)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("device", ["gpu7", "cuda:x", ""])
def test_a_garbage_device_is_a_user_error(device):
    with pytest.raises(ProbeError, match="bad --device.*cpu, cuda") as e:
        resolve_device(device)
    assert "\n" not in str(e.value)
