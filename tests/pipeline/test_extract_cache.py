"""Fixed costs of an extraction that are paid once: a checkpoint's sha256 (cached on disk by
path, size, mtime and inode) and the weights' sha256 (cached on the model while its
tensors are unchanged)."""
import hashlib
import json
import os

import torch

from probe.pipeline.run import weights_sha256
from probe.extractors import weights as checkpoints


def test_a_checkpoint_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoints, "CACHE_MIN_BYTES", 0)
    path = tmp_path / "w.pt"
    path.write_bytes(b"first")
    assert checkpoints.sha256(str(path)) == hashlib.sha256(b"first").hexdigest()
    cache_file = tmp_path / "cache" / "probe" / "sha256.json"
    assert list(json.loads(cache_file.read_text())) == [str(path)]

    hashed = []
    real = checkpoints._file_sha256
    monkeypatch.setattr(checkpoints, "_file_sha256", lambda *a: hashed.append(a) or real(*a))
    assert checkpoints.sha256(str(path)) == hashlib.sha256(b"first").hexdigest()
    assert not hashed  # answered from the cache

    os.replace(_written(tmp_path / "new.pt", b"other"), path)  # replaced, as a download is
    assert checkpoints.sha256(str(path)) == hashlib.sha256(b"other").hexdigest()
    assert len(hashed) == 1


def test_an_unwritable_cache_only_costs_a_hash(tmp_path, monkeypatch):
    blocker = _written(tmp_path / "not-a-folder", b"")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(checkpoints, "CACHE_MIN_BYTES", 0)
    path = _written(tmp_path / "w.pt", b"weights")
    assert checkpoints.sha256(str(path)) == hashlib.sha256(b"weights").hexdigest()


def test_the_weights_hash_follows_every_change_of_the_weights():
    model = torch.nn.Linear(3, 2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    first = weights_sha256(model)
    assert weights_sha256(model) == first
    with torch.no_grad():
        model.weight.add_(1)
    changed = weights_sha256(model)
    assert changed != first
    model.load_state_dict(saved)
    assert weights_sha256(model) == first


def _written(path, data):
    path.write_bytes(data)
    return path
