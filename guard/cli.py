"""`whisper-guard`: transcribe, verify, calibrate, serve, call."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from guard import memory
from guard.config import PolicyMode, Settings
from guard.errors import GuardError
from guard.results import Granularity, GuardResult, RequestOptions, TranscriptSegment, word_json


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="tiny.en (default), base, or a CTranslate2 Whisper directory")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default auto: CUDA when present)")
    p.add_argument("--compute-type", help="CTranslate2 compute type (default: int8 on cpu, float16 on cuda)")
    p.add_argument("--calibration", type=Path, help="calibration JSON from `whisper-guard calibrate`")


def _policy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", choices=[m.value for m in PolicyMode], help="annotate | flag | suppress")
    p.add_argument("--flag-threshold", type=float, metavar="0..1",
                   help="flag segments scoring at least this (default: the model's calibrated threshold)")
    p.add_argument("--suppress-threshold", type=float, metavar="0..1",
                   help="with --policy suppress, drop segments scoring at least this from the text "
                        "(default: the model's calibrated threshold)")
    p.add_argument("--word-timestamps", action="store_true",
                   help="time and score every word (JSON rows carry words: [{word, start, end, probability, score, "
                        "verdict}])")
    p.add_argument("--granularity", choices=[g.value for g in Granularity],
                   help="what suppress removes from the text: whole segments (default) or words")


def settings_from(args: argparse.Namespace, *, one_request: bool = False) -> Settings:
    """Env vars (WHISPER_GUARD_*) first, flags override.

    `one_request`: a command that runs one request at a time (transcribe, verify) loads one
    CTranslate2 worker and one analysis thread unless WHISPER_GUARD_MAX_CONCURRENT says otherwise,
    as plain faster-whisper does: a second worker and a second probe in flight only cost memory."""
    overrides = {k: v for k, v in {"model": args.model, "device": args.device, "compute_type": args.compute_type,
                                   "calibration": args.calibration}.items() if v is not None}
    if one_request and "WHISPER_GUARD_MAX_CONCURRENT" not in os.environ:
        overrides["max_concurrent"] = 1
    settings = Settings(**overrides)
    memory.limit_arenas(settings.malloc_arenas)  # a process setting: before any model's thread starts
    return settings


def _options(args: argparse.Namespace, **extra) -> RequestOptions:
    granularity = getattr(args, "granularity", None)
    return RequestOptions(policy=getattr(args, "policy", None), flag_threshold=getattr(args, "flag_threshold", None),
                          suppress_threshold=getattr(args, "suppress_threshold", None),
                          word_timestamps=bool(getattr(args, "word_timestamps", False)),
                          **({"granularity": Granularity(granularity)} if granularity else {}), **extra)


def _rounded(row: dict) -> dict:
    """A --manifest row for people and diffs: times to the millisecond, other floats to 6 digits."""
    out = {}
    for k, v in row.items():
        if isinstance(v, float):
            v = round(v, 3) if k in ("start", "end") else float(f"{v:.6g}")
        elif isinstance(v, dict):
            v = _rounded(v)
        out[k] = v
    return out


def _print_result(label: str, result: GuardResult, as_json: bool, key: str = "file") -> None:
    for s in result.segments:
        seg = s.segment
        if as_json:
            row = {key: label, "start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text,
                   "avg_logprob": seg.avg_logprob, "no_speech_prob": seg.no_speech_prob,
                   "compression_ratio": seg.compression_ratio, "score": round(s.score, 4),
                   "verdict": s.verdict.value,
                   "reasons": [{"feature": r.feature, "value": r.value, "contribution": round(r.contribution, 3)}
                               for r in s.reasons]}
            if s.features is not None:
                row["features"] = s.features
            if s.words is not None:
                row["words"] = [word_json(w) for w in s.words]
            print(json.dumps(row, ensure_ascii=False))
        else:
            mark = {"pass": " ", "flag": "?", "suppress": "x"}[s.verdict.value]
            why = ", ".join(r.feature for r in s.reasons[:2])
            print(f"{label}  [{seg.start:7.2f} -> {seg.end:7.2f}] {mark} score {s.score:.3f}  {seg.text.strip()}"
                  + (f"   ({why})" if s.verdict.value != "pass" and why else ""))
            for w in s.words or []:
                wmark = {"pass": " ", "flag": "?", "suppress": "x"}[w.verdict.value]
                print(f"{label}      [{w.start:7.2f} -> {w.end:7.2f}] {wmark} score {w.score:.3f}  {w.word.strip()}")
    if not as_json and result.granularity is Granularity.word and result.segments:
        print(f"{label}  text: {result.text}")
    if not as_json and not result.segments:
        print(f"{label}  (no segments)")


def cmd_transcribe(args: argparse.Namespace) -> int:
    from guard import corpus
    from guard.audio import decode_file
    from guard.pipeline import Guard

    if bool(args.manifest) == bool(args.files):
        args.parser.error("give audio FILEs, or --manifest M.jsonl with --out PRED.jsonl")
    if args.manifest and not args.out:
        args.parser.error("--manifest needs --out PRED.jsonl")
    settings = settings_from(args, one_request=not args.manifest)
    guard = Guard(settings)
    options = _options(args, language=args.language, return_features=args.features)
    if args.manifest:
        n = 0
        with open(args.out, "w", encoding="utf-8") as out:
            tmp = Path(str(args.out) + ".clips")
            for line in corpus.run(guard, args.manifest, tmp, options=options,
                                   max_seconds=settings.max_audio_seconds):
                n += 1
            order = {c["id"]: i for i, c in enumerate(corpus.read_manifest(args.manifest))}
            rows = sorted(corpus.load(tmp)[0], key=lambda r: order.get(r["id"], len(order)))  # manifest order
            for seg in rows:
                out.write(json.dumps(_rounded(seg), default=float, ensure_ascii=False) + "\n")
        print(f"wrote {args.out} ({n} clips transcribed; per-clip log {tmp})", file=sys.stderr)
        return 0
    for f in args.files:
        result = guard.transcribe(decode_file(f, max_seconds=settings.max_audio_seconds), options)
        _print_result(str(f), result, args.json)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from guard.audio import decode_file
    from guard.pipeline import Guard

    if args.segments:
        segs = [TranscriptSegment(**s) for s in json.loads(Path(args.segments).read_text())]
    elif args.text:
        segs = [TranscriptSegment(text=args.text)]
    else:  # argparse makes one of them required; an empty --text lands here
        args.parser.error("give --text \"...\" or --segments SEGMENTS.json ([{text, start?, end?}, ...])")
    settings = settings_from(args, one_request=True)
    guard = Guard(settings)
    audio = decode_file(args.audio, max_seconds=settings.max_audio_seconds)
    _print_result(str(args.audio), guard.verify(audio, segs, _options(args, language=args.language)), args.json)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from guard import corpus
    from guard.calibrate import CONFIDENCE_FEATURES, fit_on_split, groups_of, split
    from guard.labels import label_segments
    from guard.pipeline import Guard

    settings = settings_from(args)
    guard = Guard(settings, require_calibration=False)
    cache = args.cache or Path(str(args.out) + ".features.jsonl")
    for _ in corpus.run(guard, args.manifest, cache, options=RequestOptions(return_features=True),
                        max_seconds=settings.max_audio_seconds):
        pass
    clips = {c["id"]: c for c in corpus.read_manifest(args.manifest)}
    rows = label_segments(clips, corpus.load(cache)[0])
    if len({r["label"] for r in rows}) < 2:
        raise SystemExit("calibration needs both grounded and hallucinated segments in the corpus")
    side, groups = split(clips), groups_of(clips)
    features = sorted({k for r in rows for k in r["features"]})
    fitted = fit_on_split(guard.default_model, rows, side, groups, features)
    baseline = fit_on_split(guard.default_model, rows, side, groups, CONFIDENCE_FEATURES)
    Path(args.out).write_text(json.dumps(fitted.calibration.to_json(), indent=1))
    np.set_printoptions(precision=3)
    print(json.dumps({"model": guard.default_model, "written": str(args.out), "fit": fitted.report,
                      "confidence_only_val": baseline.report["val"]}, indent=1, default=float))
    return 0


_HEAVY = {"serve": "run the gRPC service", "call": "call a running guard over gRPC"}


def _needs_full_parser(words: list[str]) -> bool:
    command = next((w for w in words if not w.startswith("-")), None)
    return command in _HEAVY or command is None or "-h" in words or "--help" in words


def build_parser(full: bool = True) -> argparse.ArgumentParser:
    """`full=False` leaves `serve` and `call` as stubs: their modules (gRPC, the service) are not
    imported on a `transcribe`/`verify`/`calibrate` start (0.3 s and ~20 MB a start)."""
    ap = argparse.ArgumentParser(prog="whisper-guard", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio and guard every segment")
    t.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help="audio files in any format FFmpeg decodes (or use --manifest)")
    t.add_argument("--json", action="store_true", help="one JSON object per segment")
    t.add_argument("--features", action="store_true", help="include the full signature (with --json)")
    t.add_argument("--language", help="ISO-639-1 code such as en (default: detected; English-only models: en)")
    t.add_argument("--manifest", type=Path, help="a corpus manifest (JSONL) to run instead of files")
    t.add_argument("--out", type=Path, help="with --manifest: predictions JSONL (one row per segment, with id)")
    _model_flags(t)
    _policy_flags(t)
    t.set_defaults(func=cmd_transcribe, parser=t)

    v = sub.add_parser("verify", help="score a transcript produced by another ASR against the audio")
    v.add_argument("audio", type=Path, help="the audio the transcript is said to come from")
    given = v.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="the whole transcript as one segment (audio up to 30 s)")
    given.add_argument("--segments", type=Path, help="JSON list of {text, start?, end?}")
    v.add_argument("--json", action="store_true", help="one JSON object per segment")
    v.add_argument("--language", help="ISO-639-1 code such as en (default: detected; English-only models: en)")
    _model_flags(v)
    _policy_flags(v)
    v.set_defaults(func=cmd_verify, parser=v)

    c = sub.add_parser("calibrate", help="refit the score on your own labelled corpus")
    c.add_argument("--manifest", type=Path, required=True, help="a labelled corpus manifest (JSONL)")
    c.add_argument("--out", type=Path, required=True, help="calibration JSON to write")
    c.add_argument("--cache", type=Path, help="resumable feature cache (default OUT.features.jsonl)")
    _model_flags(c)
    c.set_defaults(func=cmd_calibrate)

    if not full:
        for name, text in _HEAVY.items():
            sub.add_parser(name, help=text)
        return ap
    try:
        from guard.server import add_serve_arguments, run_serve

        s = sub.add_parser("serve", help="run the gRPC service")
        add_serve_arguments(s)
        s.set_defaults(func=run_serve)
    except ImportError as e:  # pragma: no cover - shown only in a broken install
        logging.getLogger(__name__).debug("serve unavailable: %s", e)
    try:
        from guard.client import add_call_arguments, run_call

        k = sub.add_parser("call", help="call a running guard over gRPC")
        add_call_arguments(k)
        k.set_defaults(func=run_call)
    except ImportError as e:  # pragma: no cover
        logging.getLogger(__name__).debug("call unavailable: %s", e)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser(_needs_full_parser(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except GuardError as e:
        print(f"whisper-guard: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
