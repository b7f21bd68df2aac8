"""TLS, mTLS and bearer tokens on real servers, with a throwaway CA made by `openssl` here."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import is_speech_text
from grpc_fixtures import SPEECH, SPEECH_TEXT, issue, make_ca, pcm16, rpc_error, running_server, sample_value
from guard.client import GuardClient, pcm16_chunks
from guard.config import Settings
from guard.transports.grpc.server import ServeError, server_credentials

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

TOKENS = ["s3cret-token-one", "s3cret-token-two"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(d, "test-ca"), make_ca(d, "other-ca")
    return SimpleNamespace(ca=ca[0], other_ca=other[0], server=issue(d, ca, "server", server=True),
                           client=issue(d, ca, "client", server=False), rogue=issue(d, other, "rogue", server=False))


def _works(client: GuardClient) -> None:
    assert client.health() == "SERVING"
    assert is_speech_text(client.transcribe(SPEECH).text)


def _refused(client: GuardClient) -> grpc.RpcError:
    err = rpc_error(client.health, timeout=5)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    return err


def test_tls(guard, pki):
    cert, key = pki.server
    with running_server(guard, tls_cert=cert, tls_key=key) as server:
        assert server.tls
        with GuardClient(server.address, root_certificates=pki.ca.read_bytes()) as c:
            _works(c)
        with GuardClient(server.address) as plaintext:
            _refused(plaintext)
        with GuardClient(server.address, root_certificates=pki.other_ca.read_bytes()) as untrusting:
            _refused(untrusting)


def test_mtls(guard, pki):
    cert, key = pki.server
    with running_server(guard, tls_cert=cert, tls_key=key, tls_client_ca=pki.ca) as server:
        ca = pki.ca.read_bytes()
        with GuardClient(server.address, root_certificates=ca, certificate_chain=pki.client[0].read_bytes(),
                         private_key=pki.client[1].read_bytes()) as c:
            _works(c)
        with GuardClient(server.address, root_certificates=ca) as no_cert:
            _refused(no_cert)
        with GuardClient(server.address, root_certificates=ca, certificate_chain=pki.rogue[0].read_bytes(),
                         private_key=pki.rogue[1].read_bytes()) as rogue:
            _refused(rogue)


def test_bearer_tokens(guard, caplog):
    with caplog.at_level("DEBUG"), running_server(guard, auth_tokens=TOKENS) as server:
        for token in TOKENS:
            with GuardClient(server.address, token=token) as c:
                _works(c)
        with GuardClient(server.address) as anonymous:
            assert anonymous.health() == "SERVING"  # probes carry no token
            for call in (lambda: anonymous.transcribe(SPEECH),
                         lambda: anonymous.verify(SPEECH, [SPEECH_TEXT]),
                         lambda: list(anonymous.stream(pcm16_chunks(pcm16(SPEECH)), sample_rate=16000))):
                err = rpc_error(call)
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "authorization: Bearer <token>" in err.details()
            with pytest.raises(grpc.RpcError) as info:  # reflection is not public either
                ProtoReflectionDescriptorDatabase(anonymous.channel).get_services()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with GuardClient(server.address, token="s3cret-token-three") as wrong:
            err = rpc_error(wrong.transcribe, SPEECH)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "not accepted" in err.details()
        stub_md = (("authorization", "Basic czNjcmV0"),)
        with GuardClient(server.address) as basic:
            err = rpc_error(basic.stub.Transcribe, basic_request(), metadata=stub_md, timeout=10)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "malformed" in err.details()
        assert sample_value(server, "whisper_guard_requests_total", method="Transcribe", code="UNAUTHENTICATED") >= 3
        with GuardClient(server.address, token=TOKENS[0]) as c:
            _works(c)  # still serving after the refusals
    assert not [r for r in caplog.records if "s3cret" in r.getMessage()], "a token reached the log"


def test_mtls_and_token_together(guard, pki):
    cert, key = pki.server
    with running_server(guard, tls_cert=cert, tls_key=key, tls_client_ca=pki.ca,
                        auth_tokens=TOKENS[:1]) as server:
        creds = dict(root_certificates=pki.ca.read_bytes(), certificate_chain=pki.client[0].read_bytes(),
                     private_key=pki.client[1].read_bytes())
        with GuardClient(server.address, **creds) as cert_only:
            assert rpc_error(cert_only.transcribe, SPEECH).code() == grpc.StatusCode.UNAUTHENTICATED
        with GuardClient(server.address, token=TOKENS[0], **creds) as both:
            _works(both)


def basic_request():
    from guard.grpc_gen import guard_pb2 as pb

    return pb.TranscribeRequest(encoded=SPEECH.read_bytes())


@pytest.mark.parametrize("fields, needle", [
    ({"tls_cert": "server.crt"}, "both tls_cert and tls_key"),
    ({"tls_client_ca": "ca.crt"}, "needs tls_cert and tls_key"),
    ({"tls_cert": "missing.crt", "tls_key": "missing.key"}, "cannot read TLS"),
])
def test_tls_misconfiguration_is_a_clear_startup_error(tmp_path: Path, fields, needle):
    settings = Settings(**{k: tmp_path / v for k, v in fields.items()})
    with pytest.raises(ServeError, match=needle):
        server_credentials(settings)
