"""Generated gRPC stubs for `whisperguard.v1` (rebuild: `python -m guard.grpc_gen.generate`).

protoc writes absolute imports (`from whisperguard.v1 import guard_pb2`), so this directory is
put on the module path and the stubs are always imported under that one name; import them from
here: `from guard.grpc_gen import guard_pb2, guard_pb2_grpc`. They load lazily so that the
generator runs even before any stub exists.
"""
from __future__ import annotations

import importlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

__all__ = ["guard_pb2", "guard_pb2_grpc"]


def __getattr__(name: str):
    if name in __all__:
        module = importlib.import_module(f"whisperguard.v1.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
