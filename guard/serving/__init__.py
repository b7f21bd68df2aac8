"""The transport-neutral serving layer: admission, call context, the unary runner, auth, TLS files.

Transports (`guard.transports.grpc`, `guard.transports.http`) are thin adapters over it; it
imports neither grpc nor an HTTP framework (tests/test_serving.py checks).
"""
from guard.serving.admission import Admission, Ticket
from guard.serving.call import Call, Outcome
from guard.serving.core import CANONICAL_CODE, Serving

__all__ = ["Admission", "CANONICAL_CODE", "Call", "Outcome", "Serving", "Ticket"]
