"""Whole-process overhead: `whisper-guard transcribe FILE` against a plain faster-whisper script.

Run through `python benchmarks/overhead.py --whole-process --model tiny.en [--model base]`.

What a CLI user, a batch job or a sidecar's start-up probe sees: every run is a fresh process
(imports, model load, graph build, decode, exit). Variants, interleaved in a rotating order per
repeat so that a shared, noisy host slows them alike (ratios are medians of per-repeat paired
ratios; absolute seconds on a shared host are only indicative):

  plain   `benchmarks/plain_whisper.py`: `WhisperModel(dir, device="cpu", compute_type="int8")
          .transcribe(FILE, beam_size=5)`, faster-whisper's defaults (it may skip silent windows
          and re-decode at higher temperatures)
  same    the same script with the guard's decoding (`temperature=[0.0]`, `no_speech_threshold=None`:
          never skips): what the guard transcribes, so (guard - same) is the guard's own cost and
          (same - plain) the share of the gap that comes from decoding differently
  threaded  `same`, with the model loaded on a short-lived thread, as the guard loads it
          (`--load-on-thread`). On a 2-core host, CTranslate2 decodes a model it loaded on the main
          thread with ~1.3 cores busy and one loaded on another thread with ~1.9: tiny.en over the
          211 s file 14.8 -> 7.9 s of transcribe (round 6). So (guard - threaded) is the guard's own cost
          against the best plain faster-whisper that this host allows
  guard   `whisper-guard transcribe FILE [--model base]`

Wall time around the child, CPU time (user + system) and peak RSS (`ru_maxrss`) from `os.wait4`:
the OS's figures, not the process's own. Linux records the parent's high-water RSS in a child
that execs from a vfork, so the parent here stays small (checked: it is reported beside).

Inputs, rebuilt deterministically on every run (16-bit WAV, lossless from the FLAC sources):
  long    12 DEV English mixtures spread evenly over the manifest sorted by id, joined (211.5 s on
          this DEV split: the file of issue 15; more are taken if that is under 180 s); without
          the corpus, the tests/fixtures clips joined
  speech  the same over DEV speech clips >= 10 s: audio where neither plain nor the guard skips a
          window; without the corpus, the speech fixture repeated
  clip1s  the first second of tests/fixtures/speech-agent-alreadyon.flac (start-up)
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SR = 16000
VARIANTS = ("plain", "same", "threaded", "guard")
LABELS = {"plain": "plain faster-whisper (defaults)", "same": "plain, guard's decoding (no skip)",
          "threaded": "plain, guard's decoding, model loaded on a thread", "guard": "whisper-guard transcribe"}


# ---------------------------------------------------------------- inputs
def _write_wav(path: Path, audio: np.ndarray) -> str:
    pcm = np.clip(np.round(audio.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    return hashlib.sha256(pcm.tobytes()).hexdigest()


def _spread(rows: list, n: int) -> list:
    if n >= len(rows):
        return list(rows)
    return [rows[i] for i in np.linspace(0, len(rows) - 1, n).round().astype(int)]


def _join_until(rows: list[dict], bench: Path, seconds: float, decode) -> tuple[np.ndarray, list[str]]:
    """The fewest rows, spread evenly over the list, whose durations reach `seconds`; joined."""
    n = 1
    while n < len(rows) and sum(r["duration"] for r in _spread(rows, n)) < seconds:
        n += 1
    picked = _spread(rows, n)
    return np.concatenate([decode(bench / r["audio"]) for r in picked]), [r["id"] for r in picked]


def build_inputs(bench: Path, work: Path, seconds: float = 180.0) -> dict[str, dict]:
    """The three input files (see the module doc); {name: {path, seconds, sources, sha256}}."""
    from guard.audio import decode_file

    decode = lambda p: decode_file(p, max_seconds=600)  # noqa: E731
    out: dict[str, dict] = {}
    manifest = bench / "manifest.jsonl"
    if manifest.is_file():
        rows = sorted((json.loads(x) for x in manifest.read_text().splitlines() if x.strip()), key=lambda r: r["id"])
        english = [r for r in rows if r.get("lang") in ("en", None, "")]
        mixtures = [r for r in english if r["kind"] == "mixture"]
        speech = [r for r in english if r["kind"] == "speech" and r["duration"] >= 10]
        picked = _spread(mixtures, 12)  # the file: 12 mixtures, 211.5 s on the DEV split
        long, long_src = np.concatenate([decode(bench / r["audio"]) for r in picked]), [r["id"] for r in picked]
        if len(long) < seconds * SR:
            long, long_src = _join_until(mixtures, bench, seconds, decode)
        talk, talk_src = _join_until(speech, bench, seconds, decode)
        origin = "DEV corpus"
    else:
        fixtures = [FIXTURES / n for n in ("mixture-speech-then-music-36s.flac", "speech-agent-alreadyon.flac",
                                           "nonspeech-music.flac", "nonspeech-sfx.flac")]
        parts, long_src = [], []
        while sum(len(p) for p in parts) < seconds * SR:
            f = fixtures[len(parts) % len(fixtures)]
            parts.append(decode(f))
            long_src.append(f.name)
        long = np.concatenate(parts)
        one = decode(FIXTURES / "speech-agent-alreadyon.flac")
        reps = int(np.ceil(seconds * SR / len(one)))
        talk, talk_src = np.tile(one, reps), [f"speech-agent-alreadyon.flac x{reps}"]
        origin = "tests/fixtures"
    clip = decode(FIXTURES / "speech-agent-alreadyon.flac")[:SR]
    for name, audio, src in (("long", long, long_src), ("speech", talk, talk_src),
                             ("clip1s", clip, ["speech-agent-alreadyon.flac[0:1s]"])):
        path = work / f"whole-{name}.wav"
        out[name] = {"path": str(path), "seconds": len(audio) / SR, "sources": src,
                     "origin": origin if name != "clip1s" else "tests/fixtures",
                     "sha256_pcm16": _write_wav(path, audio)}
    return out


# ---------------------------------------------------------------- one process
def _peak_self_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def run_process(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` to completion; wall, CPU and peak RSS from the kernel (os.wait4)."""
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=fo, stderr=fe, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err.decode(errors='replace')[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024,
            "stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace")}


def commands(model: str, model_dir: str, path: str) -> dict[str, list[str]]:
    plain = [sys.executable, str(ROOT / "benchmarks" / "plain_whisper.py"), model_dir, path]
    guard = [str(Path(sys.executable).with_name("whisper-guard")), "transcribe", path, "--json"]
    if model != "tiny.en":
        guard += ["--model", model]
    return {"plain": plain, "same": plain + ["--same-as-guard"],
            "threaded": plain + ["--same-as-guard", "--load-on-thread"], "guard": guard}


def _text_of(variant: str, run: dict) -> str:
    if variant != "guard":
        return run["stdout"].strip()
    rows = [json.loads(x) for x in run["stdout"].splitlines() if x.strip()]
    return "".join(r["text"] for r in rows).strip()


def _windows_of(run: dict) -> dict | None:
    for line in reversed(run["stderr"].splitlines()):
        if line.startswith("{") and '"windows"' in line:
            return json.loads(line)
    return None


def ensure_bytecode() -> dict:
    """Compile the guard's own modules, as pip does when it installs a wheel, and say what was stale.

    Interpreters started with PYTHONDONTWRITEBYTECODE (this project's containers and CI hosts)
    never cache the bytecode of an editable checkout themselves, so without this every guard
    process would compile its ~30 modules (~75 ms) while faster-whisper, installed from a wheel,
    reads compiled files: a start-up cost no installed guard pays."""
    import compileall
    import importlib.util

    package = Path(importlib.util.find_spec("guard").origin).parent
    sources = sorted(package.rglob("*.py"))

    def stale(src: Path) -> bool:
        pyc = Path(importlib.util.cache_from_source(str(src)))
        return not pyc.exists() or pyc.stat().st_mtime < src.stat().st_mtime

    before = sum(map(stale, sources))
    if not compileall.compile_dir(str(package), quiet=1):
        raise RuntimeError(f"compileall could not compile {package}")
    return {"package": str(package), "modules": len(sources), "stale_before": before,
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "")}


# ---------------------------------------------------------------- the benchmark
def bench(model: str, model_dir: str, inputs: dict[str, dict], repeats: int, variants=VARIANTS,
          log=print) -> dict:
    med = lambda xs: float(statistics.median(xs))  # noqa: E731
    bytecode = ensure_bytecode()
    log(f"[{model}] guard bytecode: {bytecode['stale_before']} of {bytecode['modules']} modules were stale, "
        f"compiled (PYTHONDONTWRITEBYTECODE={bytecode['PYTHONDONTWRITEBYTECODE'] or 'unset'})")
    results: dict[str, dict] = {}
    k = 0
    for name, spec in inputs.items():
        cmds = commands(model, model_dir, spec["path"])
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(repeats):
            order = variants[k % len(variants):] + variants[:k % len(variants)]
            k += 1
            for v in order:
                runs[v].append(run_process(cmds[v]))
            log(f"[{model}] {name} rep {rep + 1}/{repeats}: " + "  ".join(
                f"{v} {runs[v][-1]['wall']:.2f}s/{runs[v][-1]['peak_mb']:.0f}MB" for v in variants))
        row: dict = {"input": name, **{k2: spec[k2] for k2 in ("seconds", "origin", "sources", "sha256_pcm16")}}
        for v in variants:
            row[v] = {"wall_s": med([r["wall"] for r in runs[v]]), "cpu_s": med([r["cpu"] for r in runs[v]]),
                      "peak_rss_mb": med([r["peak_mb"] for r in runs[v]]),
                      "wall_per_repeat": [r["wall"] for r in runs[v]]}
            if (w := _windows_of(runs[v][0])) is not None:
                row[v].update(w)
        def paired(v: str, base: str, minus: str | None = None) -> dict:
            """Medians of the per-repeat ratios v / base (and of v - base wall seconds, as `minus`)."""
            pairs = list(zip(runs[v], runs[base]))
            out = {key: med([a[m] / b[m] for a, b in pairs])
                   for key, m in (("wall", "wall"), ("cpu", "cpu"), ("peak_rss", "peak_mb"))}
            if minus:
                out[minus] = med([a["wall"] - b["wall"] for a, b in pairs])
            return out

        for v in variants:
            if v != "plain":
                row[f"{v}_over_plain"] = paired(v, "plain", "wall_minus_plain_s")
        if "same" in variants:
            row["guard_over_same"] = paired("guard", "same")
            if "threaded" in variants:
                row["guard_over_threaded"] = paired("guard", "threaded", "wall_minus_s")
            gap = [g["wall"] - p["wall"] for g, p in zip(runs["guard"], runs["plain"])]
            decoding = [s["wall"] - p["wall"] for s, p in zip(runs["same"], runs["plain"])]
            row["gap_share_from_decoding"] = med(decoding) / med(gap) if med(gap) > 0 else None
            texts = {v: _text_of(v, runs[v][0]) for v in variants}
            row["guard_text_equals_same"] = texts["guard"] == texts["same"]
            row["guard_text_equals_plain"] = texts["guard"] == texts["plain"]
        results[name] = row
    return {"model": model, "model_dir": model_dir, "repeats": repeats, "variants": list(variants),
            "commands": {v: " ".join(c) for v, c in commands(model, model_dir, "FILE").items()},
            "benchmark_parent_peak_rss_mb": _peak_self_mb(), "guard_bytecode": bytecode, "inputs": results}


def markdown(r: dict) -> str:
    lines = [f"# Whole-process overhead: {r['model']} on cpu (int8)", "",
             f"{r['repeats']} repeats per input, the {len(r['variants'])} processes interleaved in a rotating order; medians. "
             "Ratios are medians of per-repeat paired ratios (the host is shared: trust the ratios, not the "
             "absolute seconds). Peak RSS is `ru_maxrss` of the child from `os.wait4`.", "",
             "Commands: " + "; ".join(f"{v}: `{c}`" for v, c in r["commands"].items()), "",
             *([f"The guard's modules were compiled before the runs, as a wheel install compiles them "
                f"({r['guard_bytecode']['stale_before']} of {r['guard_bytecode']['modules']} were stale; "
                f"PYTHONDONTWRITEBYTECODE={r['guard_bytecode']['PYTHONDONTWRITEBYTECODE'] or 'unset'}).", ""]
               if "guard_bytecode" in r else []),
             "| input | s | variant | wall s | CPU s | peak RSS MB | windows (skipped) | wall / plain | CPU / plain "
             "| RSS / plain |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in r["inputs"].items():
        for v in r["variants"]:
            m = row[v]
            ratio = row.get(f"{v}_over_plain")
            win = f"{m['windows']} ({m.get('skipped', 0)})" if "windows" in m else ""
            lines.append(f"| {name} | {row['seconds']:.0f} | {v} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | "
                         f"{m['peak_rss_mb']:.0f} | {win} | "
                         + (f"**{ratio['wall']:.3f}** | {ratio['cpu']:.3f} | {ratio['peak_rss']:.2f} |" if ratio
                            else "1 | 1 | 1 |"))
    lines += ["", "| input | guard - plain wall s | guard / same wall | guard / threaded wall, CPU, RSS (guard - threaded s) "
              "| share of the gap from decoding (same - plain) | guard text = same | guard text = plain |",
              "|---|---:|---:|---:|---:|---|---|"]
    for name, row in r["inputs"].items():
        if "guard_over_same" not in row:
            continue
        share = row["gap_share_from_decoding"]
        t = row.get("guard_over_threaded")
        threaded = (f"{t['wall']:.3f}, {t['cpu']:.3f}, {t['peak_rss']:.2f} ({t['wall_minus_s']:+.2f})" if t else "")
        lines.append(f"| {name} | {row['guard_over_plain']['wall_minus_plain_s']:+.2f} | "
                     f"{row['guard_over_same']['wall']:.3f} | {threaded} | {'n/a' if share is None else f'{share:.0%}'} | "
                     f"{'yes' if row['guard_text_equals_same'] else 'no'} | "
                     f"{'yes' if row['guard_text_equals_plain'] else 'no'} |")
    lines += ["", "Inputs: " + "; ".join(f"{n}: {row['seconds']:.1f} s from {row['origin']} "
                                          f"({len(row['sources'])} sources, pcm sha256 {row['sha256_pcm16'][:12]})"
                                          for n, row in r["inputs"].items()), ""]
    if r.get("findings"):
        lines += ["Findings:", ""] + [f"- {f}" for f in r["findings"]] + [""]
    return "\n".join(lines)
