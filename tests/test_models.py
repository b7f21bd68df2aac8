"""Model resolution: pinned checksums, split models joined once, clear errors, and the model.bin reader."""
from __future__ import annotations

import dataclasses
import gc
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard import hash_cache, models
from guard.errors import ModelError, UnknownModel
from guard.probe import ct2_reader
from guard.probe.decoder_graph import Embedding


def test_tiny_en_resolves_from_its_package_with_pinned_sha(tmp_path):
    m = models.resolve("tiny.en", cache=tmp_path)
    assert m.sha256 == models.KNOWN["tiny.en"].sha256
    assert (m.path / "model.bin").is_file()


def test_base_parts_are_joined_once_atomically_and_verified(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="guard.models"):
        m = models.resolve("base", cache=tmp_path)
    # the first use says what it writes where (it takes a while), at a level shown by default
    joined = [r.getMessage() for r in caplog.records if "joining" in r.getMessage()]
    assert len(joined) == 1 and str(m.path) in joined[0], caplog.text
    assert f"({(m.path / 'model.bin').stat().st_size / 1e6:.0f} MB)" in joined[0]
    caplog.clear()
    assert m.sha256 == models.KNOWN["base"].sha256
    assert m.path.parent == tmp_path and (m.path / "tokenizer.json").is_file()
    mtime = (m.path / "model.bin").stat().st_mtime_ns
    again = models.resolve("base", cache=tmp_path)
    assert again.path == m.path and (m.path / "model.bin").stat().st_mtime_ns == mtime  # not joined twice
    assert not [r for r in caplog.records if "joining" in r.getMessage()]  # and not announced twice
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([m.path.name, "hashes"])  # no temp dirs left


def test_checksum_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    bad = dataclasses.replace(models.KNOWN["tiny.en"], sha256="0" * 64)
    monkeypatch.setitem(models.KNOWN, "tiny.en", bad)
    with pytest.raises(ModelError, match="sha256 .* expected 0{64}.*reinstall"):
        models.resolve("tiny.en", cache=tmp_path)


def test_hash_is_recorded_per_file_identity_and_any_change_is_rehashed(tmp_path, monkeypatch):
    src = models.resolve("tiny.en", cache=tmp_path).path
    copy = tmp_path / "my-whisper"
    shutil.copytree(src, copy)
    bin_ = copy / "model.bin"
    calls = []
    real = hash_cache.sha256_file
    monkeypatch.setattr(hash_cache, "sha256_file", lambda p: calls.append(p) or real(p))
    first = models.resolve(str(copy), cache=tmp_path)
    assert first.sha256 == models.KNOWN["tiny.en"].sha256 and len(calls) == 1
    assert models.resolve(str(copy), cache=tmp_path).sha256 == first.sha256 and len(calls) == 1  # a stat, no read
    with open(bin_, "r+b") as f:  # same size, one byte changed: a new mtime, so hashed again
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    changed = models.resolve(str(copy), cache=tmp_path)
    assert len(calls) == 2 and changed.sha256 != first.sha256
    for record in (tmp_path / "hashes").iterdir():  # a corrupt record counts as none
        record.write_text("{not json")
    assert models.resolve(str(copy), cache=tmp_path).sha256 == changed.sha256 and len(calls) == 3


def test_a_changed_pinned_file_is_rehashed_and_the_mismatch_still_fails_clearly(tmp_path, monkeypatch):
    m = models.resolve("base", cache=tmp_path)  # joined into the cache: a file this test may change
    bin_ = m.path / "model.bin"
    assert models.resolve("base", cache=tmp_path).sha256 == m.sha256
    saved = bin_.read_bytes()
    try:
        with open(bin_, "r+b") as f:
            f.seek(len(saved) // 2)
            f.write(bytes(b ^ 0xFF for b in saved[len(saved) // 2:len(saved) // 2 + 16]))
        with pytest.raises(ModelError, match="sha256 .* expected .*corrupt or not the pinned release"):
            models.resolve("base", cache=tmp_path)
    finally:
        bin_.write_bytes(saved)
    assert models.resolve("base", cache=tmp_path).sha256 == m.sha256


def test_corrupt_split_parts_are_rejected_and_not_cached(tmp_path, monkeypatch):
    bad = dataclasses.replace(models.KNOWN["base"], sha256="f" * 64)
    monkeypatch.setitem(models.KNOWN, "base", bad)
    with pytest.raises(ModelError, match="corrupt or mismatched"):
        models.resolve("base", cache=tmp_path)
    assert not any(p.name.startswith("base") for p in tmp_path.iterdir())


def test_missing_model_package_says_what_to_install(tmp_path, monkeypatch):
    ghost = dataclasses.replace(models.KNOWN["tiny.en"], packages=("no_such_model_package",),
                                pip="pip install no-such-model-package")
    monkeypatch.setitem(models.KNOWN, "tiny.en", ghost)
    with pytest.raises(ModelError, match="not installed; run: pip install no-such-model-package"):
        models.resolve("tiny.en", cache=tmp_path)


def test_small_is_refused_with_one_clear_reason(tmp_path):
    # its PyPI parts are incomplete: not offered as an extra, refused by name (not a load failure)
    with pytest.raises(ModelError, match=r"model 'small' is not available: .*incomplete.*188\.7 MB.*123 of 406"):
        models.resolve("small", cache=tmp_path)
    assert "small" not in models.KNOWN and not list(tmp_path.iterdir())


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(UnknownModel, match="known models: tiny.en, base"):
        models.resolve("large-v9", cache=tmp_path)
    with pytest.raises(UnknownModel):
        models.resolve(str(tmp_path), cache=tmp_path, allow_paths=False)
    with pytest.raises(ModelError, match="missing model.bin, config.json, tokenizer.json"):
        models.resolve(str(tmp_path), cache=tmp_path)


def test_any_ctranslate2_directory_works_by_path(tmp_path):
    src = models.resolve("tiny.en", cache=tmp_path).path
    copy = tmp_path / "my-whisper"
    shutil.copytree(src, copy)
    m = models.resolve(str(copy), cache=tmp_path)
    assert m.name == "my-whisper" and m.sha256 == models.KNOWN["tiny.en"].sha256


# ---------------------------------------------------------------- model.bin reader
def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _var(name: str, arr: np.ndarray, dtype: int) -> bytes:
    return (_string(name) + bytes([arr.ndim]) + b"".join(struct.pack("<I", d) for d in arr.shape) + bytes([dtype])
            + struct.pack("<I", arr.nbytes) + arr.tobytes())


def _model_bin() -> tuple[bytes, np.ndarray]:
    w = np.array([[10, -20, 30], [5, 0, -5]], dtype=np.int8)
    scale = np.array([10.0, 5.0], dtype=np.float32)
    emb = np.arange(6, dtype=np.float16).reshape(2, 3)
    body = b"".join([_var("dec/linear/weight", w, 1), _var("dec/linear/weight_scale", scale, 0),
                     _var("dec/embeddings/weight", emb, 4)])
    data = (struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 3) + body
            + struct.pack("<I", 1) + _string("dec/projection/weight") + _string("dec/embeddings/weight"))
    return data, w.astype(np.float32) / scale[:, None]


def test_reader_parses_dtypes_scales_and_aliases():
    data, dequantized = _model_bin()
    mb = ct2_reader.parse(data)
    assert (mb.version, mb.spec, mb.revision) == (6, "WhisperSpec", 3)
    np.testing.assert_allclose(mb.float32("dec/linear/weight"), dequantized)
    np.testing.assert_array_equal(mb.float32("dec/projection/weight"), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_reader_reads_the_real_tiny_en(tmp_path):
    mb = ct2_reader.read(models.resolve("tiny.en", cache=tmp_path).path / "model.bin")
    assert mb.spec == "WhisperSpec" and mb.get("decoder/embeddings/weight").shape == (51864, 384)


def _embedding_bin(table: np.ndarray, dtype: int, scale: np.ndarray | None = None) -> bytes:
    positions = np.linspace(-1, 1, 6 * table.shape[1], dtype=np.float32).reshape(6, table.shape[1])
    body = [_var("decoder/embeddings/weight", table, dtype)]
    if scale is not None:
        body.append(_var("decoder/embeddings/weight_scale", scale, 0))
    body.append(_var("decoder/position_encodings/encodings", positions, 0))
    return (struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(body))
            + b"".join(body) + struct.pack("<I", 0))


@pytest.mark.parametrize("kind", ["float16", "int8", "float32"])
def test_the_probes_embedding_reads_rows_from_the_file_as_the_mapping_would(tmp_path, kind):
    rng = np.random.default_rng(7)
    table = rng.normal(size=(50, 8))
    scale = None
    if kind == "int8":
        table, scale, dtype = (table * 40).astype(np.int8), rng.uniform(20, 60, 50).astype(np.float32), 1
    else:
        table, dtype = table.astype(kind), {"float16": 4, "float32": 0}[kind]
    path = tmp_path / "model.bin"
    path.write_bytes(_embedding_bin(table, dtype, scale))
    tokens = np.array([3, 49, 0, 3, 17])  # a repeated token, both ends of the table
    from_file = Embedding(ct2_reader.read(path), path=path)
    assert str(path) not in Path("/proc/self/maps").read_text()  # nothing of the file stays mapped
    rows = from_file(tokens)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, Embedding(ct2_reader.read(path))(tokens))
    gc.collect()  # the mapped reference's mapping is gone before the file is rewritten
    with open(path, "r+b") as f:  # cut short under the probe: a clear error, not garbage rows
        f.truncate(ct2_reader.parse(_embedding_bin(table, dtype, scale)).offsets["decoder/embeddings/weight"]
                   + 2 * table.shape[1] * table.itemsize)  # two rows of the table left
    with pytest.raises(ModelError, match="changed or was truncated"):
        from_file(tokens)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_reader_fuzz_truncated_flipped_or_random_input_is_a_model_error(data):
    good, _ = _model_bin()
    mode = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if mode == "truncate":
        buf = good[: data.draw(st.integers(0, len(good) - 1))]
    elif mode == "flip":
        pos = data.draw(st.integers(0, len(good) - 1))
        buf = good[:pos] + bytes([good[pos] ^ data.draw(st.integers(1, 255))]) + good[pos + 1:]
    else:
        buf = data.draw(st.binary(max_size=200))
    try:
        ct2_reader.parse(buf)
    except ModelError:
        pass  # the only acceptable failure
