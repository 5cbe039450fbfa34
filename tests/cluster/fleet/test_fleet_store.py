"""The content-hash model store: names that cannot escape it, migration of the old layout."""

from __future__ import annotations

import hashlib
import json

import pytest

from cluster.fleet.manager import Manager, ManagerOptions
from edge.model_store import ModelStore
from pipeline.errors import ModelError


def test_put_get_by_hash_and_names_that_cannot_escape(tmp_path):
    store = ModelStore(tmp_path / "store")
    sha, path = store.put("v1.2_rc-1", "brain.nir", b"abc")
    assert sha == hashlib.sha256(b"abc").hexdigest() and path == tmp_path / "store" / "sha256" / sha / "brain.nir"
    store.put("again", "brain.nir", b"abc")  # same content: stored once
    assert len(list((tmp_path / "store" / "sha256").iterdir())) == 1
    assert ModelStore(tmp_path / "store").get("v1.2_rc-1")[0] == sha  # the index survives a restart
    for version, file in (("../../escape", "m"), ("/abs/dir", "m"), ("..", "m"), (".", "m"), ("", "m"),
                          ("v", "../m"), ("v", "a/b"), ("v", ".."), ("x" * 65, "m"), ("v\n", "m")):
        with pytest.raises(ModelError):
            store.put(version, file, b"x")
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {f"store/sha256/{sha}/brain.nir", "store/index.json"}


def test_old_layout_is_migrated_and_odd_folders_left_alone(tmp_path):
    root = tmp_path / "fleet" / "models"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "brain.nir").write_bytes(b"old model")
    (root / "two-files").mkdir()
    (root / "two-files" / "a").write_bytes(b"a")
    (root / "two-files" / "b").write_bytes(b"b")
    mgr = Manager(ManagerOptions(keys=str(tmp_path / "keys"), out=str(tmp_path / "fleet")))
    sha, file, data = mgr.store.read("v1")
    assert (file, data, sha) == ("brain.nir", b"old model", hashlib.sha256(b"old model").hexdigest())
    assert not (root / "v1").exists() and (root / "two-files" / "a").exists()
    assert json.loads((root / "index.json").read_text())["v1"]["sha256"] == sha
