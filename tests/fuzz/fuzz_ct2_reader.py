#!/usr/bin/env python
"""Coverage-guided fuzzing of the CTranslate2 model.bin reader (`guard.probe.ct2_reader`) with atheris.

Each input is parsed as a model.bin. The contract: `parse` returns a ModelBin whose arrays match
their declared shapes and lie inside the input, or raises `guard.errors.ModelError`; and every
accessor the probe uses (`get`, `has`, `float32`) on a parsed file returns finite-shaped arrays or
raises ModelError (or KeyError for a name that is not there). Anything else (IndexError,
struct.error, ValueError from a bad reshape or scale, MemoryError from a size nobody checked,
a hang on a huge declared count) is a finding.

    python tests/fuzz/fuzz_ct2_reader.py --write-seeds /tmp/ct2-corpus
    python tests/fuzz/fuzz_ct2_reader.py /tmp/ct2-corpus -atheris_runs=500000   # README: Reliability and security
"""
import contextlib
import struct
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["guard"]):
    from guard.errors import ModelError
    from guard.probe import ct2_reader

import numpy as np


def check(buf: bytes) -> None:
    try:
        mb = ct2_reader.parse(buf)
    except ModelError:
        return
    total = 0
    for name, value in mb.variables.items():
        assert isinstance(value, np.ndarray) and value.ndim <= 8, name
        total += value.nbytes
    assert total <= len(buf), (total, len(buf))  # views into the input, nothing invented
    for name in list(mb.variables) + list(mb.aliases):
        with contextlib.suppress(ModelError, KeyError):  # the documented failures; anything else escapes
            if mb.has(name):
                mb.get(name)
            mb.float32(name)


def test_one_input(data: bytes) -> None:
    check(data)


# ---- seeds: a synthetic model.bin with every dtype, scales and aliases, and real-file prefixes ----------


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _var(name: str, arr: np.ndarray, dtype: int) -> bytes:
    return (_string(name) + bytes([arr.ndim]) + b"".join(struct.pack("<I", d) for d in arr.shape) + bytes([dtype])
            + struct.pack("<I", arr.nbytes) + arr.tobytes())


def synthetic(version: int = 6) -> bytes:
    variables = [
        _var("decoder/layer_0/linear/weight", np.array([[10, -20, 30], [5, 0, -5]], np.int8), 1),
        _var("decoder/layer_0/linear/weight_scale", np.array([10.0, 5.0], np.float32), 0),
        _var("decoder/layer_1/linear/weight", np.array([[1000, -2], [3, 4]], np.int16), 2),
        _var("decoder/layer_1/linear/weight_scale", np.array([100.0, 1.0], np.float32), 0),
        _var("decoder/embeddings/weight", np.arange(6, dtype=np.float16).reshape(2, 3), 4),
        _var("decoder/bf16", np.array([0x3F80, 0xC000], np.uint16), 5),
        _var("decoder/ids", np.array([1, 2, 3], np.int32), 3),
        _var("decoder/scalar", np.array(2.5, np.float32), 0),
    ]
    aliases = [("decoder/projection/weight", "decoder/embeddings/weight"), ("decoder/dangling", "decoder/nothing")]
    return (struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<I", 3)
            + struct.pack("<I", len(variables)) + b"".join(variables)
            + struct.pack("<I", len(aliases)) + b"".join(_string(a) + _string(t) for a, t in aliases))


def _dims_var(name: str, dims: list[int]) -> bytes:
    """A float32 variable declaring `dims` and 0 bytes of data."""
    return _string(name) + bytes([len(dims)]) + b"".join(struct.pack("<I", d) for d in dims) + b"\0" \
        + struct.pack("<I", 0)


def _model(*variables: bytes) -> bytes:
    return struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 1) + struct.pack("<I", len(variables)) \
        + b"".join(variables)


def seeds() -> dict[str, bytes]:
    out = {"synthetic-v6": synthetic(6), "synthetic-v5": synthetic(5), "empty-model": _model(),
           # regressions: 3 scales for 2 rows (a ValueError in float32 before the fix); a config-like int8 scalar
           "scale-mismatch": _model(_var("a/weight", np.zeros((2, 3), np.int8), 1),
                                    _var("a/weight_scale", np.ones(3, np.float32), 0)),
           "int8-scalar": _model(_var("decoder/num_heads", np.array(6, np.int8), 1)),
           # regressions found by this harness: dims whose int64 product wraps to 0, and a zero dim next
           # to dims numpy cannot index (both were a ValueError from reshape instead of a ModelError)
           "dims-overflow": _model(_dims_var("w", [65536] * 4)),
           "dims-impossible": _model(_dims_var("w", [0, 2**32 - 1, 2**32 - 1, 2**32 - 1]))}
    # the real tiny.en's first kilobytes: real names and headers (the data is cut short); without
    # the model the synthetic seeds are enough to start
    with contextlib.suppress(Exception):
        from guard import models

        real = models.resolve("tiny.en", cache=Path("/tmp"), verify=False).path / "model.bin"
        with open(real, "rb") as f:
            out["tiny.en-head"] = f.read(4096)
    return out


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (directory / name).write_bytes(data)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
