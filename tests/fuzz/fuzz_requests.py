#!/usr/bin/env python
"""Coverage-guided fuzzing of request validation with atheris (no model needed).

Each input is one method byte plus the raw bytes of a request message, as they arrive on the wire.
They go through what the server runs before any inference: the tolerant deserializer
(`guard.transports.grpc.servicer._parser`), options (`GuardService._options`, the policy), audio
(`audio_from_request` with a small cap), the Verify transcript (`transcript_from_pb`,
`plan_verify_windows`) and, for stream chunks, the stream config and `PcmStream`.

The contract: each step returns its value or raises a GuardError whose code blames the request
(INVALID_ARGUMENT, OUT_OF_RANGE). Anything else (another exception, an INTERNAL code, a message
with a traceback, audio over the cap) is a finding. The model-dependent checks (served model
names, languages) are fuzzed through the real server in tests/test_fuzz_requests.py.

    python tests/fuzz/fuzz_requests.py --write-seeds /tmp/req-corpus        # seed corpus
    python tests/fuzz/fuzz_requests.py /tmp/req-corpus -atheris_runs=200000   # README: Reliability and security
"""
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["guard"]):
    from guard import policy as policy_mod
    from guard import intake
    from guard.transports.grpc import messages
    from guard.transports.grpc import servicer as service
    from guard.errors import GuardError, Kind
    from guard.grpc_gen import guard_pb2 as pb
    from guard.pipeline import plan_verify_windows

import numpy as np

MAX_SECONDS = 2.0
TYPES = (pb.TranscribeRequest, pb.VerifyRequest, pb.AudioChunk)
CALIBRATED = {"flag": 0.5, "suppress": 0.8}


def _blames_request(err: GuardError) -> None:
    assert err.kind in (Kind.bad_request, Kind.bad_audio, Kind.too_long, Kind.bad_transcript), (type(err).__name__, err.kind, err.message)
    assert err.message and "Traceback" not in err.message


def _audio_ok(y: np.ndarray) -> None:
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1
    assert np.isfinite(y).all() and y.size <= MAX_SECONDS * 16000 + 160


def _options(o):
    opts = service.GuardService._options(o)
    policy = policy_mod.resolve(opts.policy, opts.flag_threshold, opts.suppress_threshold,
                                default_mode=policy_mod.PolicyMode.flag, config_flag=None, config_suppress=None,
                                calibrated=CALIBRATED)
    assert 0 <= policy.flag_threshold <= 1 and 0 <= policy.suppress_threshold <= 1
    return opts


def validate(kind: int, data: bytes) -> None:
    message = service._parser(TYPES[kind])(data)
    if isinstance(message, service.Malformed):
        _blames_request(message.error())
        return
    if kind == 2:  # a stream chunk: config first, then PCM16 pieces
        cfg = message.config
        if message.HasField("config"):
            _options(cfg.options)
        stream = intake.PcmStream(cfg.sample_rate, cfg.channels or 1, MAX_SECONDS)
        half = len(message.pcm16) // 2 + 1
        for piece in (message.pcm16[:half], message.pcm16[half:]):
            _audio_ok(stream.push(piece))
        _audio_ok(stream.flush())
        return
    _options(message.options)
    if kind == 1:
        transcript = messages.transcript_from_pb(message.transcript)
    samples = messages.audio_from_request(message, MAX_SECONDS).decode()
    _audio_ok(samples)
    if kind == 1:
        windows = plan_verify_windows(transcript, len(samples) / 16000)
        assert sum(len(segs) for _, segs, _ in windows) == len(transcript)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        validate(data[0] % 3, data[1:])
    except GuardError as e:
        _blames_request(e)


def seeds() -> dict[str, bytes]:
    """Valid and near-valid requests of each kind (the method byte first)."""
    flac = (ROOT / "tests" / "fixtures" / "audio" / "tone.flac").read_bytes()
    pcm = (np.sin(np.arange(3200) / 5) * 8000).astype("<i2").tobytes()
    opts = pb.Options(model="tiny.en", language="en", beam_size=5, policy=pb.POLICY_MODE_SUPPRESS,
                      flag_threshold=0.4, suppress_threshold=0.9, return_features=True)
    out = {
        "transcribe-flac": b"\0" + pb.TranscribeRequest(encoded=flac, options=opts).SerializeToString(),
        "transcribe-pcm": b"\0" + pb.TranscribeRequest(pcm=pb.RawPcm(data=pcm, sample_rate=8000, channels=2))
        .SerializeToString(),
        "verify-timed": b"\1" + pb.VerifyRequest(pcm=pb.RawPcm(data=pcm, sample_rate=16000), options=opts, transcript=[
            pb.TranscriptSegment(text="hello there", start_seconds=0.0, end_seconds=0.1),
            pb.TranscriptSegment(text="again", start_seconds=0.1, end_seconds=0.2)]).SerializeToString(),
        "verify-untimed": b"\1" + pb.VerifyRequest(encoded=flac, transcript=[pb.TranscriptSegment(text="hi")])
        .SerializeToString(),
        "chunk-config": b"\2" + pb.AudioChunk(config=pb.StreamConfig(sample_rate=44100, channels=2, options=opts),
                                              pcm16=pcm[:1001]).SerializeToString(),
        "chunk-pcm": b"\2" + pb.AudioChunk(pcm16=pcm).SerializeToString(),
    }
    return out


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (directory / name).write_bytes(data)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
