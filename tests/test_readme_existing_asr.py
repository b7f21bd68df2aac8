"""README "Guard an existing ASR": both Python blocks, read out of README.md and run as a user
would, against real servers on loopback: faster-whisper-server 0.0.3 as the upstream, the guard
in proxy mode (way 1) and the guard's gRPC server (way 2). The only substitutions are addresses
(README: 127.0.0.1:8080, asr.internal:8000, 127.0.0.1:50051) and the files it names (meeting.flac
= the speech fixture, clip.flac = the music fixture on which tiny.en writes "Thanks for watching!")."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import MUSIC, SPEECH, SPEECH_TEXT
from grpc_fixtures import running_server
from proxy_fixtures import VERIFY_THRESHOLDS, running_proxy
from whisper_normalizer.english import EnglishTextNormalizer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
norm = EnglishTextNormalizer()


def python_blocks() -> list[str]:
    section = README[README.index("## Guard an existing ASR"):]
    section = section[:section.index("<!-- /section -->")]
    return re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)


def run(code: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_readme_shows_both_ways():
    blocks = python_blocks()
    assert len(blocks) == 2
    assert "OpenAI(base_url=\"http://127.0.0.1:8080/v1\"" in blocks[0]
    assert "GuardClient(\"127.0.0.1:50051\")" in blocks[1] and "asr.internal:8000/v1" in blocks[1]


def test_way_1_the_proxy(guard, peer, tmp_path):
    shutil.copy(SPEECH, tmp_path / "meeting.flac")
    with running_proxy(guard, peer.base_url) as server:
        code = python_blocks()[0].replace("http://127.0.0.1:8080", server.url)
        lines = run(code, tmp_path).splitlines()
    assert norm(lines[0]) == norm(SPEECH_TEXT)
    assert len(lines) >= 2 and "'verdict': 'pass'" in lines[1]


def test_way_2_grpc_verify(guard, peer, tmp_path):
    shutil.copy(MUSIC, tmp_path / "clip.flac")
    with running_server(guard) as server:
        code = python_blocks()[1].replace("http://asr.internal:8000/v1", peer.base_url) \
            .replace("127.0.0.1:50051", server.address)
        out = run("KEY = 'unused'\n" + code, tmp_path)
    from guard.grpc_gen import guard_pb2 as pb

    rows = [line.split(" ", 2) for line in out.splitlines()]
    assert rows and all(int(v) == pb.VERDICT_FLAG and float(score) >= VERIFY_THRESHOLDS["flag"] for v, score, _ in rows), out
    assert "watching" in out.lower(), "the upstream's invented 'Thanks for watching!' on music, flagged"
