"""The `whisper-guard` command as a user runs it (a real subprocess, the real model)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import MUSIC, SPEECH, SPEECH_TEXT

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
    assert words(" ".join(r["text"] for r in speech), "en") == words(SPEECH_TEXT, "en")
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
