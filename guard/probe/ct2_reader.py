"""Read a CTranslate2 `model.bin` into named numpy arrays, without CTranslate2.

Layout (little-endian): u32 binary version, string spec name, u32 spec revision, u32 variable
count, then per variable: string name, u8 rank, u32 dims[rank], u8 dtype, u32 byte count, data;
then u32 alias count and (alias, target) string pairs. A string is a u16 length that counts a
trailing NUL, then its bytes. dtype: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. Quantized
weights (i8, i16) come with a per-row `<name>_scale` and dequantize as weight / scale.
"""
from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guard.errors import ModelError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}  # 5 = bf16 bits
_MAX_RANK = 8


@dataclass
class ModelBin:
    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # views into the file where possible
    dtypes: dict[str, int]
    aliases: dict[str, str]
    offsets: dict[str, int] = field(default_factory=dict)  # byte offset of each variable's data in the file

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scale_name(self, key: str) -> str:
        """The per-row scale of a quantized variable."""
        return key[: -len("weight")] + "weight_scale" if key.endswith("weight") else key + "_scale"

    def float32(self, name: str) -> np.ndarray:
        """The variable as float32, dequantized when stored as int8/int16 with a scale."""
        key = self.aliases.get(name, name)
        value, dtype = self.variables[key], self.dtypes[key]
        scale = None
        if dtype in (1, 2):
            scale_name = self.scale_name(key)
            if scale_name not in self.variables:
                raise ModelError(f"quantized variable {key} has no {scale_name}")
            scale = self.float32(scale_name)
            if scale.size != 1 and (value.ndim == 0 or scale.size != value.shape[0]):
                raise ModelError(f"quantized variable {key} has {scale.size} scales for shape {list(value.shape)}")
        return to_float32(value, dtype, scale)


def to_float32(value: np.ndarray, dtype: int, scale: np.ndarray | None = None) -> np.ndarray:
    """Stored values as float32: exact for float16 and bfloat16; int8/int16 divided by `scale`, one
    per leading index of `value` or a single one."""
    if dtype == 5:
        return (value.astype(np.uint32) << 16).view(np.float32)
    if dtype in (1, 2):
        scale = scale.reshape(()) if scale.size == 1 else scale.reshape(-1, *([1] * (value.ndim - 1)))
        return value.astype(np.float32) / scale
    return value.astype(np.float32)


class _Cursor:
    def __init__(self, buf, name: str):
        self.buf, self.pos, self.name = buf, 0, name

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ModelError(f"{self.name}: truncated or corrupt model.bin (wanted {n} bytes at offset {self.pos}, "
                             f"file has {len(self.buf)})")
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = self.u16()
        raw = bytes(self.take(n))
        if n == 0 or raw[-1] != 0:
            raise ModelError(f"{self.name}: corrupt string at offset {self.pos - n}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"{self.name}: non-UTF-8 name at offset {self.pos - n}") from None


def parse(buf, name: str = "model.bin") -> ModelBin:
    """Parse a model.bin held in a bytes-like object (bytes, mmap)."""
    c = _Cursor(buf, name)
    version = c.u32()
    if version < 5 or version > 6:
        raise ModelError(f"{name}: unsupported CTranslate2 binary version {version} (expected 5 or 6)")
    spec, revision = c.string(), c.u32()
    count = c.u32()
    variables, dtypes, offsets = {}, {}, {}
    for _ in range(count):
        var = c.string()
        rank = c.u8()
        if rank > _MAX_RANK:
            raise ModelError(f"{name}: variable {var} has rank {rank}")
        dims = [c.u32() for _ in range(rank)]
        dtype = c.u8()
        if dtype not in _DTYPES:
            raise ModelError(f"{name}: variable {var} has unknown dtype {dtype}")
        nbytes = c.u32()
        np_dtype = np.dtype(_DTYPES[dtype])
        expected = math.prod(dims) * np_dtype.itemsize  # Python ints: no int64 overflow to 0
        if nbytes != expected:
            raise ModelError(f"{name}: variable {var} declares {nbytes} bytes, shape {dims} needs {expected}")
        offsets[var] = c.pos
        data = c.take(nbytes)
        try:
            variables[var] = np.frombuffer(data, dtype=np_dtype).reshape(dims)
        except ValueError:  # e.g. a zero dim next to dims whose product numpy cannot index
            raise ModelError(f"{name}: variable {var} has an impossible shape {dims}") from None
        dtypes[var] = dtype
    aliases = {}
    if c.pos < len(buf):
        for _ in range(c.u32()):
            alias = c.string()
            aliases[alias] = c.string()
    return ModelBin(version, spec, revision, variables, dtypes, aliases, offsets)


def read(path: str | Path) -> ModelBin:
    """Memory-map and parse a model.bin; arrays stay views into the mapping."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    return parse(buf, str(path))
