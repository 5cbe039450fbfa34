"""Model files by content hash, the same on the manager and on every robot.

    STORE/sha256/<hex>/<file>     the bytes, once per content, under their original file name
    STORE/index.json              version -> {"sha256", "file", "bytes"}

A version name and a file name are `[A-Za-z0-9._-]` and not dots alone (`edge.wire.valid_name`),
and the folder is the hash we computed ourselves, so no name a peer sends can point outside
the store; every path is checked to lie inside it before anything is written. A store in the
earlier layout (`STORE/<version>/<file>`) is migrated on open: each such folder holding one
valid file becomes an index entry and is removed; anything else is left alone and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from edge.wire import valid_name
from pipeline.errors import ModelError

log = logging.getLogger(__name__)
INDEX = "index.json"
BLOBS = "sha256"


class ModelStore:
    """`put(version, file, data)` and `get(version)`; see the module docstring for the layout."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.index: dict[str, dict] = {}
        if (self.root / INDEX).is_file():
            try:
                data = json.loads((self.root / INDEX).read_text())
                self.index = {v: e for v, e in data.items() if valid_name(v) and isinstance(e, dict)}
            except (OSError, ValueError) as exc:
                log.warning("model store %s: index unreadable (%s); starting a new one", self.root, exc)
        self._migrate()

    def _inside(self, path: Path) -> Path:
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise ModelError(f"model path '{path}' lies outside the store '{root}'")
        return path

    def path(self, sha256: str, file: str) -> Path:
        if not valid_name(file) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ModelError(f"bad model file name {file!r} or hash {sha256!r}")
        return self._inside(self.root / BLOBS / sha256 / file)

    def put(self, version: str, file: str, data: bytes) -> tuple[str, Path]:
        """Store `data` as `version` (file name `file`); returns (sha256, path)."""
        if not valid_name(version):
            raise ModelError(f"bad model version {version!r}: use [A-Za-z0-9._-], not dots alone")
        if not valid_name(file):
            raise ModelError(f"bad model file name {file!r}: use [A-Za-z0-9._-], not dots alone")
        sha = hashlib.sha256(data).hexdigest()
        path = self.path(sha, file)
        if not path.is_file() or path.stat().st_size != len(data):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        self.index[version] = {"sha256": sha, "file": file, "bytes": len(data)}
        self._write_index()
        return sha, path

    def get(self, version: str) -> tuple[str, str, Path] | None:
        """(sha256, file, path) of a stored version, or None."""
        e = self.index.get(version)
        if e is None:
            return None
        try:
            path = self.path(e["sha256"], e["file"])
        except (KeyError, TypeError, ModelError):
            return None
        return (e["sha256"], e["file"], path) if path.is_file() else None

    def read(self, version: str) -> tuple[str, str, bytes] | None:
        got = self.get(version)
        return None if got is None else (got[0], got[1], got[2].read_bytes())

    def _write_index(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (INDEX + ".tmp")
        tmp.write_text(json.dumps(self.index, indent=1, sort_keys=True))
        tmp.replace(self.root / INDEX)

    def _migrate(self) -> None:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or folder.is_symlink() or folder.name == BLOBS:
                continue
            files = [f for f in folder.iterdir() if f.is_file() and not f.is_symlink()]
            if not valid_name(folder.name) or len(files) != 1 or not valid_name(files[0].name):
                log.warning("model store %s: left '%s' alone (not one model file under a valid version name)",
                            self.root, folder.name)
                continue
            if folder.name not in self.index:
                self.put(folder.name, files[0].name, files[0].read_bytes())
            shutil.rmtree(folder)
            log.info("model store %s: migrated version '%s' to the content-hash layout", self.root, folder.name)
