#!/usr/bin/env python3
"""Container health check: gRPC health `Check` on the local guard; exit 0 only when SERVING.

Used by the Dockerfiles' HEALTHCHECK and, when gRPC runs over TLS, by the Kubernetes exec
probes (kubelet's native gRPC probes cannot speak TLS). It reads the server's own
WHISPER_GUARD_ADDRESS / WHISPER_GUARD_TLS_CERT, so it needs no flags inside the container:

    python healthcheck.py [--target HOST:PORT] [--ca FILE] [--service NAME] [--timeout S]

With TLS it trusts --ca, else `ca.crt` next to the certificate, else the certificate itself
(self-signed), and names the server `localhost` (the certificate needs that SAN).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gRPC health check for whisper-guard")
    ap.add_argument("--target", help="host:port (default: localhost and the port of WHISPER_GUARD_ADDRESS)")
    ap.add_argument("--ca", help="CA bundle that signed the server certificate (TLS only)")
    ap.add_argument("--service", default="", help="health service name ('' = the whole server)")
    ap.add_argument("--timeout", type=float, default=4.0)
    args = ap.parse_args(argv)

    port = os.environ.get("WHISPER_GUARD_ADDRESS", "127.0.0.1:50051").rpartition(":")[2]
    target = args.target or f"localhost:{port}"
    cert = os.environ.get("WHISPER_GUARD_TLS_CERT")
    if cert or args.ca:
        ca = Path(args.ca) if args.ca else Path(cert).with_name("ca.crt")
        if not ca.is_file():
            ca = Path(cert)
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes()))
    else:
        channel = grpc.insecure_channel(target)
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"unhealthy: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
