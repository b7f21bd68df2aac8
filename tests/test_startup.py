"""Start-up of the CLI: what `transcribe` loads (no gRPC stack, one worker) without changing `serve`."""
from __future__ import annotations

import argparse
import subprocess
import sys

from guard import cli


def loaded_after(code: str, test: str) -> str:
    """Run `code` in a fresh interpreter, then print the sorted modules for which `test` (an
    expression in m) holds."""
    script = f"import sys; {code}; print(sorted(m for m in sys.modules if {test}))"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def test_transcribe_start_does_not_import_the_grpc_stack():
    code = ("from guard import cli; p = cli.build_parser(cli._needs_full_parser(['transcribe', 'x.wav'])); "
            "p.parse_args(['transcribe', 'x.wav'])")
    assert loaded_after(code, "m == 'grpc' or m.startswith(('guard.server', 'guard.service'))") == "[]"


def test_a_start_imports_neither_onnx_nor_the_verify_normaliser():
    code = "from guard import cli; import guard.pipeline"
    assert loaded_after(code, "m in ('onnx', 'ml_dtypes', 'guard.verify_features', 'whisper_normalizer')") == "[]"


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
