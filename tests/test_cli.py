"""The `whisper-guard` command as a user runs it (a real subprocess, the real model)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import MUSIC, SPEECH, SPEECH_TEXT, is_speech_text

from guard.labels import words

CLI = [sys.executable, "-m", "guard.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, check=check)


def test_transcribe_prints_scored_segments_and_json_rows():
    human = run("transcribe", str(SPEECH), str(MUSIC)).stdout
    assert "That agent is already logged on." in human and "score" in human
    rows = [json.loads(line) for line in run("transcribe", "--json", str(SPEECH), str(MUSIC)).stdout.splitlines()]
    keys = {"file", "start", "end", "text", "avg_logprob", "no_speech_prob", "compression_ratio", "score", "verdict"}
    assert all(keys <= set(r) for r in rows)
    speech = [r for r in rows if r["file"] == str(SPEECH)]
    music = [r for r in rows if r["file"] == str(MUSIC)]
    assert is_speech_text(" ".join(r["text"] for r in speech))
    assert {r["verdict"] for r in speech} == {"pass"} and {r["verdict"] for r in music} == {"flag"}


def test_transcribe_manifest_writes_rows_with_ids(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": cid, "audio": str(path)}) for cid, path in
                                  (("speech", SPEECH), ("music", MUSIC))) + "\n")
    out = tmp_path / "pred.jsonl"
    run("transcribe", "--manifest", str(manifest), "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"] for r in rows} == {"speech", "music"}
    assert all({"score", "verdict", "start", "end", "text"} <= set(r) and "file" not in r for r in rows)


def test_verify_and_clear_errors(tmp_path):
    good = json.loads(run("verify", str(SPEECH), "--text", SPEECH_TEXT, "--json").stdout.splitlines()[0])
    bad = json.loads(run("verify", str(SPEECH), "--text", "Thanks for watching, see you next time!", "--json")
                     .stdout.splitlines()[0])
    assert good["score"] < bad["score"] and good["verdict"] == "pass"
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC" + b"\x00" * 100)
    res = run("transcribe", str(broken), check=False)
    assert res.returncode == 2 and res.stderr.startswith("whisper-guard: ") and "Traceback" not in res.stderr
    res = run("transcribe", "--model", "large-v9", str(SPEECH), check=False)
    assert res.returncode == 2 and "unknown model 'large-v9'" in res.stderr


# ---- friction a first user met (issue 14) ------------------------------------------------------


def test_every_argument_has_help():
    import argparse

    from guard.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    walk(p, f"{name} {sub}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "whisper-guard")
    assert not missing, missing


def test_usage_errors_exit_2_with_the_program_prefix():
    for args, needle in ((("verify", str(SPEECH)), "one of the arguments --text --segments is required"),
                         (("verify", str(SPEECH), "--text", ""), "give --text"),
                         (("transcribe",), "give audio FILEs"),
                         (("transcribe", "--manifest", "m.jsonl"), "--manifest needs --out")):
        res = run(*args, check=False)
        assert res.returncode == 2, (args, res)
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith(f"whisper-guard {args[0]}: error: ") and needle in last, (args, res.stderr)
        assert res.stderr.startswith("usage: whisper-guard ") and "Traceback" not in res.stderr


def test_small_fails_with_one_clear_message():
    res = run("transcribe", "--model", "small", str(MUSIC), check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "whisper-guard: " + __import__("guard.models").models.UNAVAILABLE["small"]


def test_segments_stay_inside_the_audio_and_text_has_no_leading_space():
    from guard.audio import decode_file, duration

    rows = [json.loads(line) for line in run("transcribe", "--json", str(SPEECH), str(MUSIC)).stdout.splitlines()]
    for path in (SPEECH, MUSIC):
        mine = [r for r in rows if r["file"] == str(path)]
        length = duration(decode_file(path, max_seconds=60))
        assert mine and all(0 <= r["start"] <= r["end"] <= round(length, 3) for r in mine), (length, mine)
        assert all(r["text"] and r["text"] == r["text"].strip() for r in mine), mine


def test_manifest_rows_come_in_manifest_order_with_rounded_floats(tmp_path):
    import hashlib

    clips = [("speech", SPEECH), ("music", MUSIC)]
    # guard.corpus runs clips in hash order; list them the other way round so the order is tested
    clips.sort(key=lambda c: hashlib.sha256(c[0].encode()).hexdigest(), reverse=True)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": cid, "audio": str(path)}) for cid, path in clips) + "\n")
    out = tmp_path / "pred.jsonl"
    run("transcribe", "--manifest", str(manifest), "--out", str(out), "--features")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids, key=[c[0] for c in clips].index) and set(ids) == {"speech", "music"}

    def floats(x):
        if isinstance(x, float):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from floats(v)

    for r in rows:
        assert r["start"] == round(r["start"], 3) and r["end"] == round(r["end"], 3)
        assert all(len(repr(abs(v)).replace(".", "").lstrip("0").split("e")[0]) <= 7 for v in floats(r)), r


# ---- whisper-guard call, against a real server on loopback ---------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_call_without_a_server_says_to_start_one():
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    res = run("call", str(MUSIC), "--address", address, "--timeout", "20", check=False)
    assert res.returncode == 1 and res.stderr.startswith("error: UNAVAILABLE: "), res.stderr
    assert f"no whisper-guard server answers at {address}; start one with `whisper-guard serve`" in res.stderr


def test_call_stream_gives_exactly_the_unary_result_and_json_keeps_every_field(guard):
    from grpc_fixtures import SPEECH_THEN_MUSIC, running_server

    with running_server(guard) as server:
        address = f"127.0.0.1:{server.port}"
        unary = json.loads(run("call", str(SPEECH_THEN_MUSIC), "--address", address, "--json").stdout)
        events = [json.loads(line) for line in
                  run("call", str(SPEECH_THEN_MUSIC), "--address", address, "--json", "--stream",
                      "--chunk-ms", "700").stdout.splitlines()]
    # --json: every field, zeros included, and the uint64 `sequence` as a number
    first = unary["segments"][0]
    assert first["index"] == 0 and first["startSeconds"] == 0.0 and "window" in first, first
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    streamed = [e["segment"] for e in events if "segment" in e]
    summary = events[-1]["summary"]
    # the stream sends the very samples the server decodes from the file: the same decode, the
    # same probe, the same scores (the README promises exactly the unary result)
    keys = ("index", "startSeconds", "endSeconds", "text", "score", "verdict", "window", "avgLogprob",
            "noSpeechProb", "compressionRatio", "reasons")
    assert len(unary["segments"]) >= 2
    assert [{k: s[k] for k in keys} for s in streamed] == [{k: s[k] for k in keys} for s in unary["segments"]]
    assert summary["text"] == unary["text"]
    # over gRPC too: no leading space, the response text the kept segments one space apart
    assert all(s["text"] and s["text"] == s["text"].strip() for s in unary["segments"])
    assert unary["text"] == " ".join(s["text"] for s in unary["segments"] if s["verdict"] != "VERDICT_SUPPRESS")
    assert all(s["endSeconds"] <= unary["summary"]["audioSeconds"] for s in unary["segments"])
    assert summary["summary"]["audioSeconds"] == unary["summary"]["audioSeconds"]
