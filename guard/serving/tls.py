"""TLS material from the settings, checked once for every transport, and `ServeError`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from guard.config import Settings


class ServeError(Exception):
    """A configuration the server cannot start with (bad address, unreadable TLS file, ...)."""


def read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ServeError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key (PEM), and the client CA when mTLS is required."""

    cert: Path
    key: Path
    client_ca: Path | None
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None


def tls_files(settings: Settings) -> TlsFiles | None:
    """The configured TLS files, read (so a bad path fails at start), or None for plaintext."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise ServeError("tls_client_ca (mTLS) needs tls_cert and tls_key as well")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ServeError("TLS needs both tls_cert and tls_key")
    key, cert = read(settings.tls_key, "TLS key"), read(settings.tls_cert, "TLS certificate")
    ca = read(settings.tls_client_ca, "client CA") if settings.tls_client_ca else None
    return TlsFiles(Path(settings.tls_cert), Path(settings.tls_key),
                    Path(settings.tls_client_ca) if settings.tls_client_ca else None, cert, key, ca)


def parse_host_port(address: str, what: str = "address") -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (loopback); port 0 picks a free one."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServeError(f"{what} must be host:port, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
