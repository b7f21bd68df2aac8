"""Security properties on the real server: no file reads from requests, tokens, limits before work.

- No request makes the server open a file: every string field carries paths, and the audio
  carries playlists and concat scripts naming a readable audio file; `strace` on a real server
  process records every open() and a canary file must never appear (C-level opens by FFmpeg
  included). Without strace the functional half still runs: a playlist that FFmpeg followed would
  decode (the canary is valid audio), so it must be refused.
- Models only by configured name: a request naming a path gets INVALID_ARGUMENT; `--model PATH`
  is refused at startup with `--no-allow-model-paths`.
- Bearer tokens: compared in constant time as SHA-256 digests (every accepted token, every call,
  equal lengths), never in logs (a DEBUG-level server process), metrics or `--help`.
- Limits are enforced before expensive work: oversized messages never reach the servicer, bombs
  and over-long audio are refused without inference and without decoding the whole file, overload
  is refused before decoding, options before audio.
- No request content reaches metric labels; client request ids are validated.
- The docs say what the code does: SECURITY.md's limit table matches the Settings defaults, and
  TLS is recommended in README and the sidecar manifest.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest

from conftest import is_speech_text
from grpc_fixtures import REPO, SPEECH, SPEECH_TEXT, pcm16, rpc_error, running_server, sample_value, wav_bytes
from guard.serving import auth as auth_module
from guard.transports.grpc import server as server_module
from guard.client import GuardClient, pcm16_chunks
from guard.config import Settings
from guard.grpc_gen import guard_pb2 as pb
from guard.grpc_gen import guard_pb2_grpc
from guard.transports.grpc.server import BearerAuth

TOKENS = ["tok-alpha-8c1f0e", "tok-beta-a77d2b9c41", "t"]


def _stub(server):
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)])
    return channel, guard_pb2_grpc.GuardStub(channel)


# ---- no request reads a file --------------------------------------------------------------------------------


def _attacks(canary: Path) -> list[tuple[str, object]]:
    """(method, request) pairs that try to make the server open `canary` (a valid audio file)."""
    c = str(canary)
    playlists = [f"ffconcat version 1.0\nfile '{c}'\n", f"#EXTM3U\n#EXTINF:5,\n{c}\n#EXT-X-ENDLIST\n",
                 f"#EXTM3U\n#EXTINF:5,\nfile://{c}\n#EXT-X-ENDLIST\n", f"concat:{c}|{c}", f"file:{c}", c,
                 f"[playlist]\nFile1={c}\nNumberOfEntries=1\n", f"<smil><body><audio src=\"{c}\"/></body></smil>"]
    paths = [c, str(canary.parent), f"../../../../../..{c}", "/etc/passwd", f"file://{c}", "~/.ssh/id_rsa"]
    flac = SPEECH.read_bytes()
    out: list[tuple[str, object]] = [("Transcribe", pb.TranscribeRequest(encoded=p.encode())) for p in playlists]
    out += [("Verify", pb.VerifyRequest(encoded=p.encode(), transcript=[pb.TranscriptSegment(text="hi")]))
            for p in playlists[:3]]
    for p in paths:
        out.append(("Transcribe", pb.TranscribeRequest(encoded=flac, options=pb.Options(model=p))))
        out.append(("Transcribe", pb.TranscribeRequest(encoded=flac, options=pb.Options(language=p[:8]))))
        out.append(("Verify", pb.VerifyRequest(encoded=flac, options=pb.Options(model=p),
                                               transcript=[pb.TranscriptSegment(text=p)])))
        out.append(("StreamTranscribe", [pb.AudioChunk(config=pb.StreamConfig(sample_rate=16000,
                                                                              options=pb.Options(model=p))),
                                         pb.AudioChunk(pcm16=pcm16(SPEECH)[:32000])]))
    return out


def _send_attacks(address: str, canary: Path) -> list[str]:
    codes = []
    with grpc.insecure_channel(address) as channel:
        stub = guard_pb2_grpc.GuardStub(channel)
        for method, request in _attacks(canary):
            call = getattr(stub, method)
            md = (("x-request-id", str(canary)),)
            err = rpc_error(lambda: call(iter(request) if method == "StreamTranscribe" else request, timeout=60,
                                         metadata=md))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request, err.code(), err.details())
            codes.append(err.code().name)
    return codes


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("canary-dir") / "canary.flac"
    path.write_bytes(SPEECH.read_bytes())
    return path


def test_no_request_makes_ffmpeg_or_python_read_a_file(guard, canary):
    """Functional half (no strace needed): had FFmpeg followed a playlist to the canary, the call
    would have succeeded with its transcript; every attack is refused instead."""
    with running_server(guard) as server:
        assert len(_send_attacks(server.address, canary)) > 30
        with GuardClient(server.address) as c:
            assert is_speech_text(c.transcribe(canary).text)  # the canary is good audio when sent as bytes


def _stop_traced(proc: subprocess.Popen) -> None:
    """SIGTERM the server under strace (strace itself would detach and leave it running), then reap both."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(10)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")
def test_strace_sees_no_file_opened_by_any_request(canary, tmp_path):
    trace = tmp_path / "open.trace"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=open,openat,openat2,creat,execve,execveat",
         "-o", str(trace), sys.executable, "-m", "guard.server", "--address", "127.0.0.1:0", "--metrics-address", ""],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    try:
        address = None
        for line in proc.stdout:
            log.append(line)
            if m := re.search(r"listening on (\S+)", line):
                address = m.group(1)
            if "SERVING models" in line:
                break
        assert address, "".join(log)
        threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
        with GuardClient(address, timeout=60) as c:  # warm every path once (lazy imports open .py files)
            assert is_speech_text(c.transcribe(SPEECH).text)
            rpc_error(c.transcribe, b"not audio")
        time.sleep(0.5)
        mark = trace.stat().st_size
        _send_attacks(address, canary)
        time.sleep(0.5)
        during = trace.read_bytes()[mark:].decode(errors="replace")
        whole = trace.read_text(errors="replace")
    finally:
        _stop_traced(proc)
    assert "openat(" in whole and "model.bin" in whole, "strace recorded nothing: the check would be blind"
    assert str(canary.parent) not in whole and "passwd" not in whole and ".ssh" not in whole
    opened = re.findall(r'(?:open|openat2?|creat)\((?:[^,"]+, )?"([^"]+)"', during) + \
        re.findall(r'execve(?:at)?\((?:[^,"]+, )?"([^"]+)"', during)
    code_dirs = tuple({sys.prefix, sys.base_prefix, str(REPO)})
    unexpected = [p for p in opened if not (p.startswith(code_dirs) and p.endswith((".py", ".pyc", ".so")))
                  and not p.startswith(("/proc/", "/sys/", "/dev/"))]
    assert not unexpected, unexpected


def test_model_paths_are_refused_at_startup_when_not_allowed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "guard.server", "--address", "127.0.0.1:0", "--metrics-address", "",
                           "--model", str(tmp_path), "--no-allow-model-paths"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert f"unknown model {str(tmp_path)!r}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---- bearer tokens -----------------------------------------------------------------------------------------


def test_tokens_are_compared_as_digests_against_every_accepted_token(monkeypatch):
    calls = []
    real = auth_module.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    auth = BearerAuth(TOKENS)
    for given, ok in [(TOKENS[0], True), (TOKENS[1], True), (TOKENS[2], True), ("x" * 5000, False),
                      ("tok-alpha-8c1f0", False), ("tok-alpha-8c1f0e0", False), ("", False)]:
        calls.clear()
        problem = auth._problem([("authorization", f"Bearer {given}")])
        assert (problem is None) == ok, given
        if given:  # every accepted token compared, whichever matched, always 32 bytes against 32 bytes
            assert calls == [(32, 32)] * len(TOKENS), (given, calls)
    assert not any(t.encode() in repr(auth.__dict__).encode() for t in TOKENS[:2]), "tokens kept in clear"
    assert auth._tokens == [hashlib.sha256(t.encode()).digest() for t in TOKENS]


def test_tokens_never_reach_logs_metrics_or_help(tmp_path):
    token_file = tmp_path / "tokens.txt"
    token_file.write_text(f"# comment\n{TOKENS[0]}\n{TOKENS[1]}\n")
    wrong = "wrong-canary-5e2b9"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "WHISPER_GUARD_LOG_LEVEL": "DEBUG",
           "GRPC_VERBOSITY": "debug"}
    proc = subprocess.Popen([sys.executable, "-m", "guard.server", "--address", "127.0.0.1:0", "--metrics-address",
                             "127.0.0.1:0", "--auth-token-file", str(token_file)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    try:
        address = metrics_url = None
        for line in proc.stdout:
            log.append(line)
            address = address or (m.group(1) if (m := re.search(r"listening on (\S+)", line)) else None)
            metrics_url = metrics_url or (m.group(1) if (m := re.search(r"metrics at (\S+)", line)) else None)
            if "SERVING models" in line:
                break
        threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
        for token in TOKENS[:2]:
            with GuardClient(address, token=token, timeout=60) as c:
                assert is_speech_text(c.transcribe(SPEECH).text)
                rpc_error(c.transcribe, b"junk")  # an error path logs too
        with GuardClient(address, token=wrong) as c:
            assert rpc_error(c.transcribe, SPEECH).code() == grpc.StatusCode.UNAUTHENTICATED
        with GuardClient(address) as c:
            md = (("authorization", f"Basic {wrong}"),)
            assert rpc_error(c.stub.Transcribe, pb.TranscribeRequest(), metadata=md, timeout=10).code() == \
                grpc.StatusCode.UNAUTHENTICATED
        import urllib.request

        scraped = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    finally:
        proc.terminate()
        proc.wait(30)
    text = "".join(log)
    assert len(re.findall(r"request \w+ Transcribe OK", text)) == 2, text  # the log did record the calls
    for secret in (*TOKENS[:2], wrong):
        assert secret not in text, f"{secret} in the server log"
        assert secret not in scraped
    assert 'code="UNAUTHENTICATED"' in scraped
    helptext = subprocess.run([sys.executable, "-m", "guard.server", "--help"], cwd=REPO,
                              env={**env, "WHISPER_GUARD_AUTH_TOKENS": f'["{TOKENS[0]}"]'},
                              capture_output=True, text=True, timeout=60).stdout
    assert "--auth-token" in helptext and TOKENS[0] not in helptext
    assert TOKENS[0] not in repr(Settings(auth_tokens=[TOKENS[0]]))


# ---- limits before expensive work ---------------------------------------------------------------------------


def _silent_flac(seconds: int, rate: int = 8000) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono", options={"frame_size": "65535"})
        stream.codec_context.format = "s16"
        zeros = np.zeros((1, 65535), np.int16)
        pts, n = 0, rate * seconds
        while pts < n:
            frame = av.AudioFrame.from_ndarray(zeros[:, :min(65535, n - pts)], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, pts
            pts += frame.samples
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _unknown_length(flac: bytes) -> bytes:
    b = bytearray(flac)
    v = int.from_bytes(b[18:26], "big")
    b[18:26] = (v & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(b)


@pytest.fixture(scope="module")
def limited(guard):
    with running_server(guard, max_audio_seconds=20, stream_max_seconds=20, max_message_bytes=4 << 20,
                        max_concurrent=1, max_queued=0) as server:
        yield server


def _work(guard) -> int:
    """Probe passes run so far: one per 30 s window of real inference."""
    return guard.bundle(None).probe.runs


@pytest.mark.parametrize("case", ["hour in 14 KB, honest header", "hour in 14 KB, unknown length",
                                  "pcm over the cap", "wav over the cap"])
def test_long_audio_is_refused_before_inference_and_before_a_full_decode(guard, limited, case):
    hour = _silent_flac(3600)
    assert len(hour) < 50_000
    request = {
        "hour in 14 KB, honest header": pb.TranscribeRequest(encoded=hour),
        "hour in 14 KB, unknown length": pb.TranscribeRequest(encoded=_unknown_length(hour)),
        "pcm over the cap": pb.TranscribeRequest(pcm=pb.RawPcm(data=b"\0\0" * 16000 * 21, sample_rate=16000)),
        "wav over the cap": pb.TranscribeRequest(encoded=wav_bytes(b"\0\0" * 16000 * 21)),
    }[case]
    channel, stub = _stub(limited)
    work = _work(guard)
    tracemalloc.start()  # numpy buffers are traced: an hour at 16 kHz float32 would be 230 MB
    t0 = time.monotonic()
    try:
        err = rpc_error(stub.Transcribe, request, timeout=60)
        elapsed = time.monotonic() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        channel.close()
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE, (case, err.details())
    assert "20 s" in err.details()
    assert _work(guard) == work, "inference ran on audio over the cap"
    assert elapsed < 3 and peak < 40e6, (elapsed, peak)


def test_stream_over_its_cap_is_cut_before_inference(guard, limited):
    work = _work(guard)
    with GuardClient(limited.address, timeout=60) as c:
        sent = []

        def chunks():  # 1 s pieces for up to 5 minutes: the server must stop reading at 20 s
            for i in range(300):
                sent.append(i)
                yield b"\0\0" * 16000

        err = rpc_error(lambda: list(c.stream(chunks(), sample_rate=16000)))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE and "20 s a stream may carry" in err.details()
    assert len(sent) < 300 and _work(guard) == work  # 20 s < one 30 s window: nothing decoded


def test_overload_and_bad_options_are_refused_before_decoding(guard, limited):
    channel, stub = _stub(limited)
    hold = threading.Event()

    def chunks():
        yield pb.AudioChunk(config=pb.StreamConfig(sample_rate=16000))
        yield pb.AudioChunk(pcm16=pcm16(SPEECH))
        hold.wait(60)

    holder = stub.StreamTranscribe(chunks(), timeout=90)
    threading.Thread(target=lambda: rpc_error(lambda: list(holder)), daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        while limited.admission.admitted == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        big = wav_bytes(pcm16(SPEECH) * 3)  # real audio: decoding it would take measurable time
        t0 = time.monotonic()
        err = rpc_error(stub.Transcribe, pb.TranscribeRequest(encoded=big), timeout=30)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - t0 < 1.0
    finally:
        hold.set()
        holder.cancel()
    deadline = time.monotonic() + 20
    while limited.admission.admitted:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    work = _work(guard)
    bomb = _unknown_length(_silent_flac(3600))
    err = rpc_error(stub.Transcribe, pb.TranscribeRequest(encoded=bomb, options=pb.Options(beam_size=99)), timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "options.beam_size" in err.details()
    assert _work(guard) == work
    channel.close()


def test_oversized_messages_never_reach_the_servicer(limited):
    before = sum(sample_value(limited, "whisper_guard_requests_total", method="Transcribe", code=c)
                 for c in ("OK", "INVALID_ARGUMENT", "OUT_OF_RANGE", "INTERNAL", "CANCELLED"))
    channel, stub = _stub(limited)
    err = rpc_error(stub.Transcribe, pb.TranscribeRequest(encoded=b"\0" * (5 << 20)), timeout=30)
    channel.close()
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.details()
    after = sum(sample_value(limited, "whisper_guard_requests_total", method="Transcribe", code=c)
                for c in ("OK", "INVALID_ARGUMENT", "OUT_OF_RANGE", "INTERNAL", "CANCELLED"))
    assert after == before


# ---- request content stays out of metrics; request ids are validated ---------------------------------------


def test_request_content_never_becomes_a_metric_label(guard):
    canary = "canary-label-3f9a"
    with running_server(guard) as server, GuardClient(server.address, timeout=60) as c:
        for call in (lambda: c.transcribe(SPEECH, model=canary), lambda: c.transcribe(SPEECH, language=canary[:8]),
                     lambda: c.verify(SPEECH, [canary], model=canary),
                     lambda: list(c.stream(pcm16_chunks(pcm16(SPEECH)), sample_rate=16000, model=canary))):
            rpc_error(call)
        c.verify(SPEECH, [f"{canary} text"])
        scraped = generate_latest(server.metrics.registry).decode()
    assert canary not in scraped and canary[:8] not in scraped
    labels = set(re.findall(r'(\w+)="', scraped))
    assert labels <= {"method", "code", "stage", "model", "verdict", "reason", "component", "le", "version", "device",
                      "ctranslate2", "onnxruntime", "python", "implementation", "major", "minor", "patchlevel"}, labels


@pytest.mark.parametrize("given, echoed", [("trace-42.a:b_c", True), ("../../etc/passwd", False), ("a" * 65, False),
                                           ("has space", False), ('quote"semi;colon', False)])
def test_client_request_ids_are_validated(guard, given, echoed):
    with running_server(guard) as server:
        channel, stub = _stub(server)
        md = (("x-request-id", given),)
        reply = stub.Transcribe(pb.TranscribeRequest(encoded=SPEECH.read_bytes()), metadata=md, timeout=60)
        channel.close()
    if echoed:
        assert reply.request_id == given
    else:
        assert re.fullmatch(r"[0-9a-f]{16}", reply.request_id), reply.request_id


# ---- the docs say what the code does ------------------------------------------------------------------------


def test_security_md_limits_match_the_settings_defaults():
    text = (REPO / "SECURITY.md").read_text()
    for heading in ("Threat model", "Sidecar on localhost", "Exposed service", "What an attacker controls",
                    "Limits", "Secrets", "Supply chain", "Reporting"):
        assert re.search(rf"^#+ .*{heading}", text, re.M | re.I), heading
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, re.M))
    for name in ("max_message_bytes", "max_audio_seconds", "stream_max_seconds", "max_concurrent", "max_queued",
                 "stream_buffer_chunks", "beam_size"):
        default = Settings.model_fields[name].get_default(call_default_factory=True)
        assert name in rows, f"SECURITY.md's limit table lacks {name}"
        assert float(rows[name]) == float(default), (name, rows[name], default)
    keepalive, timeout = server_module.KEEPALIVE_TIME_MS // 1000, server_module.KEEPALIVE_TIMEOUT_MS // 1000
    assert f"`{keepalive} s`" in text and f"{timeout} s" in text


def test_tls_is_recommended_in_readme_and_sidecar_manifest():
    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- section: reliability (owner: reliability) -->", 1)[1].split("<!-- /section -->")[0]
    assert re.search(r"TLS.{0,40}recommended|recommended.{0,40}TLS", section, re.S | re.I), section[:500]
    assert "SECURITY.md" in section and "soak" in section
    manifest = (REPO / "deploy" / "k8s" / "base" / "deployment.yaml").read_text()
    assert "TLS: recommended" in manifest
