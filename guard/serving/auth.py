"""Bearer tokens, checked the same way for every transport.

Tokens are kept and compared as SHA-256 digests, in constant time, each given token against
every accepted one, so neither a token's value nor its length leaks through timing; they are
never logged. A transport passes the raw `authorization` value it received (or None).
"""
from __future__ import annotations

import hashlib
import hmac


class Tokens:
    """The accepted bearer tokens; `problem(value)` is None when `value` carries one of them."""

    def __init__(self, tokens: list[str]):
        self.digests = [hashlib.sha256(t.encode()).digest() for t in tokens if t]

    def __bool__(self) -> bool:
        return bool(self.digests)

    def problem(self, authorization: str | None, where: str = "metadata") -> str | None:
        """What is wrong with an `authorization` value (`where`: metadata or header), or None."""
        if authorization is None:
            return f"missing credentials: send the {where} `authorization: Bearer <token>`"
        scheme, _, token = str(authorization).strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return f"malformed `authorization` {where}: expected `Bearer <token>`"
        given, ok = hashlib.sha256(token.strip().encode()).digest(), False
        for accepted in self.digests:
            ok |= hmac.compare_digest(given, accepted)
        return None if ok else "the bearer token is not accepted by this server"
