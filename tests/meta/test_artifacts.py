"""Artifact store on a local folder and on fsspec's memory filesystem."""
from __future__ import annotations

import hashlib

import pytest

from loopstack.errors import LoopstackError
from loopstack.meta.artifacts import ArtifactStore


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    return ArtifactStore(tmp_path / "art" if request.param == "local" else f"memory://art-{tmp_path.name}")


def test_put_get_list_and_hash(store, tmp_path):
    h = store.put_bytes("models/m1/model.bin", b"weights")
    assert h == hashlib.sha256(b"weights").hexdigest()
    src = tmp_path / "x.txt"
    src.write_text("data")
    store.put_file("datasets/d1.txt", src)
    assert store.get_bytes("models/m1/model.bin") == b"weights"
    assert store.list() == ["datasets/d1.txt", "models/m1/model.bin"]
    assert store.list("models") == ["models/m1/model.bin"] and store.exists("datasets/d1.txt")
    store.put_bytes("models/m1/model.bin", b"v2")  # overwrite replaces atomically
    assert store.get_bytes("models/m1/model.bin") == b"v2"


def test_bad_paths_and_missing_artifacts_are_clear(store):
    with pytest.raises(LoopstackError, match="must be relative"):
        store.put_bytes("../escape", b"x")
    with pytest.raises(LoopstackError, match="no artifact 'nope'"):
        store.get_bytes("nope")
