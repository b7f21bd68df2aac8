"""The serving layer on its own: transport-neutral imports, outcomes, the call context."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import pytest

from guard.errors import Busy, Cancelled, GuardError, Kind, Unavailable
from guard.metrics import CODES
from guard.serving.call import Call, Outcome, request_id
from guard.serving.core import CANONICAL_CODE
from guard.transports.grpc.status import STATUS

TRANSPORT_MODULES = ("grpc", "grpc_health", "grpc_reflection", "starlette", "uvicorn", "fastapi", "multipart",
                     "python_multipart", "guard.grpc_gen", "guard.transports")  # (onnx loads protobuf itself)


def test_the_serving_layer_and_the_core_import_no_transport():
    """Importing the serving layer and the pipeline (in a fresh interpreter) loads neither grpc
    nor an HTTP framework: the transports depend on the core, never the other way round."""
    code = ("import json, sys\n"
            "import guard.serving, guard.serving.core, guard.serving.admission, guard.serving.auth, "
            "guard.serving.call, guard.serving.options, guard.serving.tls, guard.pipeline, guard.intake, "
            "guard.metrics, guard.errors\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if any(m == t or m.startswith(t + ".") for t in TRANSPORT_MODULES)]
    assert not bad, bad
    assert "guard.serving.core" in loaded  # the check itself imported what it claims


def test_every_error_kind_is_an_outcome_with_one_code_per_transport():
    for kind in Kind:
        outcome = Outcome.of(kind)
        assert outcome.value == kind.value
        assert CANONICAL_CODE[outcome] in CODES
        # the gRPC status of an outcome is exactly the code its metric counts it under
        assert STATUS[outcome].name == CANONICAL_CODE[outcome], outcome
    assert set(CANONICAL_CODE) == set(Outcome) == set(STATUS)


def test_no_error_names_a_wire_code():
    import guard.errors as errors

    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, GuardError):
            assert not hasattr(obj, "code"), obj
            assert isinstance(obj.kind, Kind)
    assert Busy("x").kind is Kind.busy and Unavailable("x").kind is Kind.unavailable


def test_call_cancellation_follows_hard_stop_client_and_deadline():
    stop = threading.Event()
    active = [True]
    call = Call("Transcribe", "rid", stop, deadline=time.monotonic() + 60, is_active=lambda: active[0])
    assert not call.cancelled()
    active[0] = False
    assert call.cancelled()
    active[0] = True
    call.deadline = time.monotonic() - 0.001
    assert call.cancelled() and call.expired()
    call.deadline = None
    stop.set()
    assert call.cancelled() and not call.expired()


@pytest.mark.parametrize("offered, kept", [("abc-1.2:3_x", True), ("", False), ("x" * 65, False),
                                           ("bad id", False), (None, False), ("ünï", False)])
def test_request_ids_from_clients_are_kept_only_when_sane(offered, kept):
    rid = request_id(offered)
    assert (rid == offered) is kept
    assert 1 <= len(rid) <= 64


def test_classify_names_the_outcome(tmp_path):
    from guard.config import Settings
    from guard.serving.core import Serving

    serving = Serving(Settings(metrics_address=""))
    call = serving.begin("Verify", timeout=0.0)
    assert serving.classify(Cancelled("x"), call)[0] is Outcome.deadline
    call = serving.begin("Verify")
    assert serving.classify(Cancelled("x"), call)[0] is Outcome.cancelled
    assert serving.classify(Busy("full"), call) == (Outcome.busy, "full")
    outcome, message = serving.classify(ZeroDivisionError("secret"), call)
    assert outcome is Outcome.internal and call.request_id in message and "secret" not in message
    serving.hard_stop.set()
    assert serving.classify(Cancelled("x"), call)[0] is Outcome.unavailable
    # no model yet: admission says unavailable, not busy
    with pytest.raises(Unavailable, match="loading"):
        serving.admit(serving.begin("Transcribe"))
    assert grpc  # imported here (not in the subprocess) for STATUS


def test_readiness_turns_true_only_after_every_listener_is_told_and_false_before(guard):
    """/readyz reads `ready`; gRPC health is a listener. A client that sees /readyz 200 must also
    see gRPC SERVING (CI once saw NOT_SERVING right after /readyz 200), and a drain must make
    /readyz 503 no later than health turns NOT_SERVING."""
    from guard.config import Settings
    from guard.serving.core import Serving

    serving = Serving(Settings())
    seen = []  # (told, ready as /readyz would answer while the listener is being told)
    serving.on_serving(lambda told: seen.append((told, serving.ready)))
    assert seen == [(False, False)]
    serving.start(guard=guard)
    assert seen[-1] == (True, False) and serving.ready
    serving.close()
    assert seen[-1] == (False, False) and not serving.ready

    late = Serving(Settings())  # closed while the model loads: it never announces SERVING
    told = []
    late.on_serving(told.append)
    late.close()
    late.start(guard=guard)
    assert told == [False, False] and not late.ready
