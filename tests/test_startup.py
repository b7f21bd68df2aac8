"""Start-up of the CLI: what `transcribe` loads (no gRPC stack, one worker) without changing `serve`."""
from __future__ import annotations

import argparse
import subprocess
import sys

from guard import cli


def test_transcribe_start_does_not_import_the_grpc_stack():
    code = ("import sys; from guard import cli; p = cli.build_parser(cli._needs_full_parser(['transcribe', 'x.wav'])); "
            "p.parse_args(['transcribe', 'x.wav']); "
            "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith(('guard.server', 'guard.service'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_and_help_still_get_the_full_parser():
    assert cli._needs_full_parser(["serve", "--help"]) and cli._needs_full_parser(["-h"])
    assert cli._needs_full_parser([]) and cli._needs_full_parser(["call"])
    assert not cli._needs_full_parser(["-v", "transcribe", "a.wav"])
    args = cli.build_parser(True).parse_args(["serve"])
    assert args.func.__name__ == "run_serve"


def test_one_request_commands_load_one_worker_unless_configured(monkeypatch):
    args = argparse.Namespace(model=None, device=None, compute_type=None, calibration=None)
    monkeypatch.delenv("WHISPER_GUARD_MAX_CONCURRENT", raising=False)
    assert cli.settings_from(args, one_request=True).max_concurrent == 1
    assert cli.settings_from(args).max_concurrent == 2  # serve keeps the configured default
    monkeypatch.setenv("WHISPER_GUARD_MAX_CONCURRENT", "3")
    assert cli.settings_from(args, one_request=True).max_concurrent == 3
