"""sha256 of a model file, hashed once per file identity instead of on every start.

A record `<cache>/hashes/<key>.json` holds the digest beside the file's identity when it was
hashed: resolved path, size, mtime_ns, inode and device. A start whose file has the same
identity reuses the digest (a stat instead of reading 75 MB for tiny.en, 3 GB for large-v3);
any change to the file (rewritten, replaced, touched, moved to another inode or disk) re-hashes
it, and the caller still compares the digest with the pin. Bit rot in place that keeps size and
mtime is not seen: the same trade `make` and pip's caches make.

Records are written atomically (temp file + rename); an unreadable, foreign or corrupt record
counts as none, and a cache directory that cannot be written only costs the re-hash.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _identity(path: Path) -> dict:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
            "device": st.st_dev}


def _record_path(cache: Path, path: Path) -> Path:
    return cache / "hashes" / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".json")


def sha256_cached(path: Path, cache: Path | None) -> str:
    """The file's sha256, from the record when the file's identity is unchanged, else hashed (and recorded)."""
    path = Path(path).resolve()
    if cache is None:
        return sha256_file(path)
    identity = _identity(path)
    record = _record_path(Path(cache), path)
    try:
        saved = json.loads(record.read_text())
        if saved.get("version") == _VERSION and saved.get("identity") == identity \
                and isinstance(saved.get("sha256"), str) and len(saved["sha256"]) == 64:
            return saved["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_file(path)
    if _identity(path) == identity:  # not changed while we read it
        remember(path, cache, digest, identity)
    return digest


def remember(path: Path, cache: Path, digest: str, identity: dict | None = None) -> None:
    """Record `digest` for the file as it is now (atomic; failures are logged, not raised)."""
    path = Path(path).resolve()
    record = _record_path(Path(cache), path)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hash-", dir=record.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _VERSION, "identity": identity or _identity(path), "sha256": digest}, f)
            os.replace(tmp, record)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        log.debug("cannot record the hash of %s in %s: %s", path, record.parent, e)
