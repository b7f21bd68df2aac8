"""README "Guard an existing ASR", way 2: a client calls the upstream itself (the openai SDK against
faster-whisper-server on loopback) and has the guard's gRPC Verify check the segments."""
from __future__ import annotations

import openai
from conftest import MUSIC, SPEECH, SPEECH_TEXT
from grpc_fixtures import running_server
from whisper_normalizer.english import EnglishTextNormalizer

from guard.client import GuardClient
from guard.grpc_gen import guard_pb2 as pb

norm = EnglishTextNormalizer()


def upstream_segments(peer, path):
    asr = openai.OpenAI(base_url=peer.base_url, api_key="unused", max_retries=0)
    with open(path, "rb") as f:
        t = asr.audio.transcriptions.create(file=f, model="whisper-1", response_format="verbose_json",
                                            timestamp_granularities=["segment"])
    return [(s.text, s.start, s.end) for s in t.segments]


def test_readme_grpc_verify_way(guard, peer):
    speech, music = upstream_segments(peer, SPEECH), upstream_segments(peer, MUSIC)
    assert music, "the upstream writes text on the music fixture (the hallucination under test)"
    with running_server(guard) as server, GuardClient(server.address) as client:
        kept = client.verify(str(SPEECH), speech, policy="suppress")
        dropped = client.verify(str(MUSIC), music, policy="suppress")
    assert norm(kept.text) == norm(SPEECH_TEXT) and all(s.verdict == pb.VERDICT_PASS for s in kept.segments)
    assert dropped.text == "" and all(s.verdict == pb.VERDICT_SUPPRESS for s in dropped.segments)
