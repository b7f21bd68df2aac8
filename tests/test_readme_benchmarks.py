"""Every `benchmarks/*.py` command the README shows parses with that script's own argument parser: a
renamed flag, or a value argparse reads as an option (`--suffix -x` where `--suffix=-x` is meant), fails
here and not for the reader. Parsing stops before any work starts (the parser is stopped right after it
succeeds). Commands with placeholders (`<...>`, `[...]`, `...`, `$...`) are left out."""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import shlex
import sys

import pytest
from conftest import ROOT

PATTERN = re.compile(r"\.venv/bin/python (benchmarks/(\w+)\.py)((?:\s+[^\s#|;&]+)*)")


def _commands() -> list[tuple[str, list[str]]]:
    blocks, current = [], None
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for m in PATTERN.finditer(line):
                args = m.group(3).strip()
                if any(p in args for p in ("<", "[", "...", "$")):
                    continue
                out.append((m.group(2), shlex.split(args)))
    return out


COMMANDS = _commands()


class _Parsed(Exception):
    """Raised with the parsed namespace the moment a script's parser succeeds: no work starts."""


def test_the_readme_shows_benchmark_commands():
    assert len(COMMANDS) >= 30 and {"detection", "misses", "hardcases", "overhead"} <= {s for s, _ in COMMANDS}


@pytest.mark.parametrize("script, argv", COMMANDS, ids=[f"{s} {' '.join(a)}"[:90] for s, a in COMMANDS])
def test_each_readme_benchmark_command_parses(script, argv, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module(script)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{script}.py", *argv])
    with pytest.raises(_Parsed):
        if inspect.signature(module.main).parameters:
            module.main(argv)
        else:
            module.main()
