"""Request options from whatever a transport parsed, validated once, with messages that name the field."""
from __future__ import annotations

from pydantic import ValidationError

from guard.errors import OptionsError, TranscriptError
from guard.results import RequestOptions, TranscriptSegment


def describe_validation(err: ValidationError, prefix: str) -> str:
    """`options.beam_size: Input should be less than or equal to 16 (got 99)`; one line per problem."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in (prefix, *e.get("loc", ())) if p != "")
        got = repr(e.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        parts.append(f"{loc}: {e.get('msg', 'invalid')} (got {got})")
    return "; ".join(parts) or f"invalid {prefix}"


def request_options(fields: dict, prefix: str = "options") -> RequestOptions:
    """Validated RequestOptions; an OptionsError naming each bad field (under `prefix`)."""
    try:
        return RequestOptions(**fields)
    except ValidationError as e:
        raise OptionsError(describe_validation(e, prefix)) from None


def transcript_segment(fields: dict, where: str) -> TranscriptSegment:
    try:
        return TranscriptSegment(**fields)
    except ValidationError as e:
        raise TranscriptError(describe_validation(e, where)) from None
