"""multipart/form-data bodies into memory with python-multipart, bounded, or a clear error.

The body size cap is enforced by `BodyLimit` (app.py) as the bytes arrive; here every part is
kept in memory (no spooling to disk: a request never writes a file), the number of parts and
the size of each non-file field are capped, and a body that ends before its closing boundary
is an error, not a silently shorter form.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from guard.errors import BadRequest

MAX_PARTS = 64
MAX_FIELD_BYTES = 256 * 1024  # a text field (a transcript to verify is the largest)


class UnsupportedMedia(BadRequest):
    """The body is not multipart/form-data (HTTP 415)."""


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytearray = field(default_factory=bytearray)

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"form field {self.name!r} is not valid UTF-8 text") from None


def boundary_of(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        shown = (content_type or "none").split(";")[0][:60]
        raise UnsupportedMedia(f"send the request as multipart/form-data (got Content-Type {shown!r}), "
                               "with the audio in the `file` field")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise BadRequest("multipart/form-data without a valid boundary parameter in Content-Type")
    return boundary


async def read_parts(content_type: str | None, body: AsyncIterator[bytes]) -> list[Part]:
    """Every part of a multipart/form-data body, in order."""
    boundary = boundary_of(content_type)
    parts: list[Part] = []
    state: dict = {"header": b"", "value": b"", "headers": {}, "part": None, "ended": False}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise BadRequest(f"too many form parts (more than {MAX_PARTS})")
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]
        if len(state["value"]) > 4096:
            raise BadRequest("a multipart part header is longer than 4 KiB")

    def on_header_end() -> None:
        state["headers"][state["header"].lower()] = state["value"]
        state["header"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(state["headers"].get(b"content-disposition", b""))
        if b"name" not in options:
            raise BadRequest('a multipart part lacks Content-Disposition with name="..."')
        filename = options.get(b"filename")
        ctype = state["headers"].get(b"content-type")
        part = Part(options[b"name"].decode("utf-8", "replace"),
                    filename.decode("utf-8", "replace") if filename is not None else None,
                    ctype.decode("latin-1") if ctype else None)
        parts.append(part)
        state["part"] = part

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = state["part"]
        part.data += data[start:end]
        if part.filename is None and len(part.data) > MAX_FIELD_BYTES:
            raise BadRequest(f"form field {part.name!r} is over {MAX_FIELD_BYTES // 1024} KiB")

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_end": on_end})
    try:
        async for chunk in body:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise BadRequest(f"the multipart/form-data body does not parse: {e}") from None
    if not state["ended"]:
        raise BadRequest("the multipart/form-data body ended before its closing boundary")
    return parts
