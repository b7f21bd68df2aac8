"""Start-up of the CLI: what `transcribe` loads (no gRPC stack, one worker) without changing `serve`."""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading

import pytest

from guard import cli
from guard.config import Settings
from guard.errors import ModelError


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


def test_onnxruntime_is_imported_by_the_load_not_by_the_imports():
    """Its import (~0.05 s) runs while CTranslate2 loads its weights (next test), not before."""
    assert loaded_after("from guard import cli; import guard.pipeline", "m == 'onnxruntime'") == "[]"
    assert loaded_after("from guard.pipeline import Guard; from guard.config import Settings; "
                        "Guard(Settings(max_concurrent=1))", "m == 'onnxruntime'") == "['onnxruntime']"


def _gate_loads(monkeypatch, transcriber=None, probe=None):
    """Make the CTranslate2 load wait until the probe's build has begun: a sequential load would
    never get there and fails after 60 s instead of hanging."""
    from guard import pipeline

    probe_began = threading.Event()
    real_transcriber, real_probe = pipeline.Transcriber.__init__, pipeline.Probe.__init__

    def transcriber_init(self, *a, **k):
        assert probe_began.wait(60), "CTranslate2 loaded alone: the probe was not built meanwhile"
        if transcriber:
            raise transcriber
        real_transcriber(self, *a, **k)

    def probe_init(self, *a, **k):
        probe_began.set()
        if probe:
            raise probe
        real_probe(self, *a, **k)

    monkeypatch.setattr(pipeline.Transcriber, "__init__", transcriber_init)
    monkeypatch.setattr(pipeline.Probe, "__init__", probe_init)


def test_ctranslate2_loads_while_the_probe_is_built(monkeypatch):
    from guard.pipeline import Guard

    _gate_loads(monkeypatch)
    guard = Guard(Settings(max_concurrent=1))
    bundle = guard.bundle(None)
    assert bundle.transcriber.ct2 is not None and bundle.probe.session is not None and guard.vad is not None
    assert not [t for t in threading.enumerate() if t.name.startswith("guard-load")]  # the loader is gone


@pytest.mark.parametrize("failing", ["ctranslate2", "probe", "both"])
def test_a_failed_load_reports_its_cause_and_leaves_no_loader(monkeypatch, failing):
    """CTranslate2's error comes first when both fail, as it did when the loads were sequential."""
    from guard.pipeline import Guard

    ct2_error = ModelError("ctranslate2 cannot load it") if failing in ("ctranslate2", "both") else None
    probe_error = ModelError("the probe cannot read it") if failing in ("probe", "both") else None
    _gate_loads(monkeypatch, ct2_error, probe_error)
    with pytest.raises(ModelError) as e:
        Guard(Settings(max_concurrent=1))
    assert e.value is (ct2_error or probe_error)
    assert not [t for t in threading.enumerate() if t.name.startswith("guard-load")]


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
