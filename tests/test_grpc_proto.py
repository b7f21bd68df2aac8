"""The wire contract: checked-in stubs are exactly what protoc makes of proto/, and follow the style."""
from __future__ import annotations

from pathlib import Path

import pytest

from guard.grpc_gen import generate, guard_pb2

GENERATED = Path(generate.__file__).resolve().parent / "whisperguard"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_stubs_are_reproducible_from_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    generate.generate(tmp_path)
    fresh, checked_in = _files(tmp_path / "whisperguard"), _files(GENERATED)
    assert sorted(fresh) == sorted(checked_in)
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stubs differ from proto/ ({stale}): run `python -m guard.grpc_gen.generate` and commit"


def test_contract_style():
    fd = guard_pb2.DESCRIPTOR
    assert fd.package == "whisperguard.v1" and fd.name == "whisperguard/v1/guard.proto"
    service = fd.services_by_name["Guard"]
    kinds = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert kinds == {"Transcribe": (False, False), "StreamTranscribe": (True, True), "Verify": (False, False)}
    for enum in fd.enum_types_by_name.values():
        assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.name
    for name in ("TranscribeResponse", "VerifyResponse", "SegmentEvent"):
        assert "request_id" in fd.message_types_by_name[name].fields_by_name, name
    event = fd.message_types_by_name["SegmentEvent"]
    assert {f.name for f in event.oneofs_by_name["event"].fields} == {"segment", "summary"}
    assert "sequence" in event.fields_by_name
    for name in ("TranscribeRequest", "VerifyRequest"):
        oneof = fd.message_types_by_name[name].oneofs_by_name["audio"]
        assert {f.name for f in oneof.fields} == {"encoded", "pcm"}
    seconds = [f.name for m in fd.message_types_by_name.values() for f in m.fields
               if "second" in f.name or f.name in ("start", "end")]
    assert all(n == "seconds" or n.endswith("_seconds") for n in seconds), seconds
