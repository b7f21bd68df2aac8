"""Word timestamps: the guard's (from the probe's own pass) against faster-whisper's `word_timestamps=True`.

    python benchmarks/words.py --model tiny.en --model base [--clips 150]

Same model directory, same audio, same decode settings (benchmarks/overhead.py `decode_kwargs`);
DEV speech clips in English of at most 30 s (one window: faster-whisper moves its seek to the last
word end when it times words, so later windows may decode differently). Boundaries are compared
only where both wrote the same words. Reports the share of word starts and ends within 20, 40 and
100 ms and the median absolute difference; writes benchmarks/results/words-<model>.{json,md}.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from guard.audio import decode_file  # noqa: E402
from guard.config import Settings  # noqa: E402
from guard.corpus import bench_dir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TOLERANCES = (0.02, 0.04, 0.1)


def compare(ours: list[tuple], theirs: list[tuple]) -> np.ndarray | None:
    """Absolute start and end differences [n, 2] when both wrote the same words, else None."""
    if [w[0] for w in ours] != [w[0] for w in theirs] or not ours:
        return None
    return np.abs(np.array([[a[1] - b[1], a[2] - b[2]] for a, b in zip(ours, theirs)]))


def guard_words(guard, audio: np.ndarray) -> list[tuple[str, float, float, int]]:
    from guard.results import RequestOptions

    result = guard.transcribe(audio, RequestOptions(word_timestamps=True, language="en"))
    return [(w.word, w.start, w.end, k) for k, s in enumerate(result.segments) for w in s.words or []]


def whisper_words(guard, audio: np.ndarray) -> list[tuple[str, float, float, int]]:
    from overhead import decode_kwargs

    model = guard.bundle(None).transcriber.whisper
    segments, _ = model.transcribe(audio, word_timestamps=True, **decode_kwargs(guard.settings))
    return [(w.word, w.start, w.end, k) for k, s in enumerate(segments) for w in s.words or []]


SENTENCE_END = (".", "!", "?")


def disagreements(clip_id: str, ours: list[tuple], theirs: list[tuple], tol: float = 0.04) -> list[dict]:
    """Every boundary more than `tol` apart, with where it sits: at a segment edge (the first word's
    start or the last word's end of one of the guard's segments), next to a sentence end (the start
    of a word after one, or the end of a word carrying one), and which side is earlier."""
    out = []
    for i, (a, b) in enumerate(zip(ours, theirs)):
        first = i == 0 or ours[i - 1][3] != a[3]
        last = i == len(ours) - 1 or ours[i + 1][3] != a[3]
        for side, k, edge, sentence in (("start", 1, first, i > 0 and ours[i - 1][0].rstrip().endswith(SENTENCE_END)),
                                        ("end", 2, last, a[0].rstrip().endswith(SENTENCE_END))):
            d = a[k] - b[k]
            if abs(d) > tol + 1e-6:
                out.append({"clip": clip_id, "word": a[0], "index": i, "boundary": side, "guard": float(a[k]),
                            "faster_whisper": float(b[k]), "diff_s": round(float(d), 3), "segment_edge": bool(edge),
                            "sentence_end": bool(sentence)})
    return out


def breakdown(bad: list[dict], boundaries: int) -> list[dict]:
    rows = []
    for edge in (True, False):
        for sentence in (True, False):
            sel = [b for b in bad if b["segment_edge"] is edge and b["sentence_end"] is sentence]
            rows.append({"segment_edge": edge, "sentence_end": sentence, "boundaries_off": len(sel),
                         "share_of_all_boundaries": len(sel) / max(1, boundaries),
                         "guard_earlier": int(sum(b["diff_s"] < 0 for b in sel))})
    return rows


def summarise(diffs: list[np.ndarray]) -> dict:
    d = np.concatenate([x.reshape(-1) for x in diffs]) if diffs else np.zeros(0)
    return {"boundaries": int(len(d)), **{f"within_{int(t * 1000)}ms": float((d <= t + 1e-6).mean()) if len(d) else None
                                           for t in TOLERANCES},
            "median_abs_s": float(np.median(d)) if len(d) else None, "p95_abs_s": float(np.percentile(d, 95)) if len(d) else None}


def run(model: str, bench: Path, n_clips: int) -> dict:
    from guard.corpus import read_manifest
    from guard.pipeline import Guard

    clips = [c for c in read_manifest(bench / "manifest.jsonl")
             if c["kind"] == "speech" and c.get("lang") == "en" and c["duration"] <= 30.0]
    clips.sort(key=lambda c: hashlib.sha256(c["id"].encode()).hexdigest())
    clips = clips[:n_clips]
    guard = Guard(Settings(model=model, max_concurrent=1))
    diffs, same, per_clip, bad = [], 0, [], []
    for k, clip in enumerate(clips, 1):
        audio = decode_file(bench / clip["audio"], max_seconds=60)
        ours, theirs = guard_words(guard, audio), whisper_words(guard, audio)
        d = compare(ours, theirs)
        if d is not None:
            same += 1
            diffs.append(d)
            per_clip.append({"id": clip["id"], "words": len(ours), "within_40ms": float((d <= 0.04 + 1e-6).mean())})
            bad += disagreements(clip["id"], ours, theirs)
        print(f"\r{model}: {k}/{len(clips)} clips, {same} with the same words", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    firsts = [x[1:] for x in diffs if len(x) > 1]  # without each clip's first word (start at a pause)
    return {"model": model, "clips": len(clips), "clips_same_words": same, "all": summarise(diffs),
            "starts": summarise([x[:, 0] for x in diffs]), "ends": summarise([x[:, 1] for x in diffs]),
            "without_first_word": summarise(firsts),
            "worst_clips": sorted(per_clip, key=lambda c: c["within_40ms"])[:10],
            "off_by_more_than_40ms": breakdown(bad, sum(x.size for x in diffs)), "disagreements": bad}


def markdown(results: list[dict]) -> str:
    lines = ["# Word timestamps: guard (probe's own pass) vs faster-whisper `word_timestamps=True`", "",
             "DEV speech clips in English, <= 30 s, same model directory and decode settings; boundaries "
             "(word starts and ends) compared where both wrote the same words.", "",
             "| model | clips | same words | boundaries | within 20 ms | within 40 ms | within 100 ms | median abs | p95 abs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        a = r["all"]
        lines.append(f"| {r['model']} | {r['clips']} | {r['clips_same_words']} | {a['boundaries']} | "
                     f"{a['within_20ms']:.3f} | **{a['within_40ms']:.4f}** | {a['within_100ms']:.3f} | "
                     f"{a['median_abs_s'] * 1000:.0f} ms | {a['p95_abs_s'] * 1000:.0f} ms |")
    lines += ["", "| model | starts within 40 ms | ends within 40 ms |", "|---|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['starts']['within_40ms']:.3f} | {r['ends']['within_40ms']:.3f} |")
    lines += ["", "Where the boundaries more than 40 ms apart sit (segment edge: a segment's first start or last "
              "end; sentence end: the end of a word carrying `.`/`!`/`?`, or the start of the word after it):", "",
              "| model | segment edge | sentence end | boundaries off | share of all | guard earlier |",
              "|---|---|---|---:|---:|---:|"]
    for r in results:
        for b in r.get("off_by_more_than_40ms", []):
            lines.append(f"| {r['model']} | {'yes' if b['segment_edge'] else 'no'} | {'yes' if b['sentence_end'] else 'no'} | "
                         f"{b['boundaries_off']} | {b['share_of_all_boundaries']:.3f} | {b['guard_earlier']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append")
    ap.add_argument("--clips", type=int, default=150)
    ap.add_argument("--bench", type=Path, default=bench_dir())
    args = ap.parse_args(argv)
    results = [run(m, args.bench, args.clips) for m in args.model or ["tiny.en"]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "-".join(r["model"] for r in results)
    (RESULTS / f"words-{tag}.json").write_text(json.dumps(results, indent=1, default=float))
    md = markdown(results)
    (RESULTS / f"words-{tag}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
