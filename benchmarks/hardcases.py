"""Hard-case clips generated from the DEV corpus' own recordings (issue 10, item 2).

    python benchmarks/hardcases.py generate [--corpus ../shared/bench] [--out DIR] [--limit N] [--scale S]
    python benchmarks/hardcases.py extract  --model tiny.en [--out DIR] [--max-minutes M]
    python benchmarks/hardcases.py summary  [--out DIR]          # counts per kind -> README.md in DIR

Hallucinations are rare in audio that also holds speech, and DEV has only a few hundred such
segments. This builds thousands of new clips from DEV's standalone speech and non-speech
recordings: speech before/after/between non-speech, under noise and music beds, time-stretched,
clipped, through a telephone band or a low-bitrate codec, reverberant, and long-form 60-300 s
clips of speech joined with real pauses and non-speech. Every clip carries its reference text
and exact speech intervals in the corpus' manifest format, so `guard.labels` applies unchanged.

Deterministic: clip k of recipe R is built from `random.Random(f"{SEED}:{R}:{k}")` alone, so any
clip can be rebuilt on its own and a run that stops resumes where it stopped (clips whose file
exists are kept). `--scale 2` makes clips k = count .. 2 count - 1 of every recipe as well: new
clips, the first ones unchanged. Split by source recording: every clip is built only from recordings on one
side of DEV's own train/validation split (`guard.calibrate.split`), and carries that `side`, so
validation recordings never feed training. The audio goes into a cache directory outside git
(default ~/.cache/whisper-guard/hardcases), with `manifest.jsonl` beside it.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from guard.audio import decode_bytes, decode_file
from guard.calibrate import split
from guard.corpus import read_manifest, bench_dir

SEED = 20261201
FEATURE_SET = "sig2"  # as benchmarks/detection.py: the signature's feature set the cache holds
SR = 16000
DEFAULT_OUT = Path.home() / ".cache" / "whisper-guard" / "hardcases"
FADE_S = 0.005
# recipe -> number of clips (5,400 in all)
RECIPES = {
    "nonspeech_then_speech": 500,  # 1-20 s of non-speech, then speech
    "speech_then_nonspeech": 500,  # speech, then 1-20 s of non-speech
    "speech_gap": 500,  # speech, 1-20 s of non-speech, speech
    "speech_in_noise": 600,  # SNR 10, 5, 0, -5 dB
    "speech_in_music": 600,  # SNR 10, 5, 0, -5 dB
    "tempo": 500,  # 0.7-2.5x, pitch kept
    "clipped": 400,  # +10..+25 dB, hard-clipped at full scale
    "telephone": 400,  # 8 kHz, 300-3400 Hz band
    "codec": 600,  # Opus 6-12 kbit/s, MP3 16-24 kbit/s, 8 kHz mu-law (200 each)
    "reverb": 400,  # synthetic room impulse response, RT60 0.3-1.5 s
    "longform": 100,  # 60-300 s: speech joined with real pauses and non-speech
}
SNRS = (10, 5, 0, -5)
BEDS = {
    "music": ("music", "ringtone"),
    "ambient": ("ambient", "nature", "animal", "keyboard", "sfx"),
    "quiet": ("near_silence", "silence"),
    "noise": ("noise",),
}


# ---------------------------------------------------------------- sources
class Sources:
    """DEV standalone speech (trimmed to its interval) and non-speech, by split side."""

    def __init__(self, corpus: Path):
        clips = {c["id"]: c for c in read_manifest(corpus / "manifest.jsonl")}
        side = split(clips)
        self.corpus = corpus
        self.clips = clips
        self.side = side
        self.speech: dict[str, list[str]] = defaultdict(list)  # side -> ids
        self.beds: dict[tuple[str, str], list[str]] = defaultdict(list)  # (side, bed) -> ids
        for cid, c in sorted(clips.items()):
            if c["kind"] == "speech" and c.get("speech") and c.get("text"):
                self.speech[side[cid]].append(cid)
            elif c["kind"] == "nonspeech":
                for bed, cats in BEDS.items():
                    if c.get("category") in cats:
                        self.beds[(side[cid], bed)].append(cid)
        self._audio: dict[str, np.ndarray] = {}

    def audio(self, cid: str) -> np.ndarray:
        if cid not in self._audio:
            self._audio[cid] = decode_file(self.corpus / self.clips[cid]["audio"], max_seconds=3600)
        return self._audio[cid]

    def speech_piece(self, cid: str) -> np.ndarray:
        """The clip cut to its speech interval, with 5 ms fades."""
        a, b = self.clips[cid]["speech"][0][0], self.clips[cid]["speech"][-1][1]
        x = self.audio(cid)[int(a * SR):int(np.ceil(b * SR))].copy()
        return fade(x, FADE_S)

    def bed(self, rng: random.Random, side: str, kind: str, seconds: float) -> tuple[np.ndarray, list[dict]]:
        """`seconds` of one bed type cut from this side's clips (concatenated when one is short)."""
        n = int(seconds * SR)
        if kind == "noise" and rng.random() < 0.6:  # sox-like synthetic noise, unit RMS
            colour = rng.choice(("white", "pink", "brown"))
            return synth_noise(np.random.default_rng(rng.getrandbits(32)), colour, n), \
                [{"from": f"synthetic:{colour}noise", "duration": round(n / SR, 3)}]
        pool = self.beds[(side, kind)] or self.beds[(side, "ambient")]
        out, parts = [], []
        have = 0
        while have < n:
            cid = rng.choice(pool)
            x = self.audio(cid)
            take = min(len(x), n - have)
            start = rng.randrange(0, max(1, len(x) - take + 1))
            out.append(fade(x[start:start + take].copy(), 0.01))
            parts.append({"from": cid, "src_start": round(start / SR, 3), "duration": round(take / SR, 3),
                          "within": round(have / SR, 3)})
            have += take
        return np.concatenate(out)[:n], parts


def fade(x: np.ndarray, seconds: float) -> np.ndarray:
    k = min(len(x) // 2, int(seconds * SR))
    if k > 0:
        ramp = np.linspace(0.0, 1.0, k, dtype=np.float32)
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def synth_noise(rng: np.random.Generator, colour: str, n: int) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        x = white
    else:
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f) if colour == "pink" else f
        x = np.fft.irfft(spec, n)
    return (x / max(rms(x), 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- effects (PyAV / numpy)
def _frames(x: np.ndarray, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, dtype=np.float32)[None, :], format="flt",
                                       layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    return frame


def _filter(x: np.ndarray, name: str, args: str) -> np.ndarray:
    graph = av.filter.Graph()
    src = graph.add_abuffer(format="flt", sample_rate=SR, layout="mono", time_base=Fraction(1, SR))
    node = graph.add(name, args)
    sink = graph.add("abuffersink")
    src.link_to(node)
    node.link_to(sink)
    graph.configure()
    graph.push(_frames(x, SR))
    graph.push(None)
    out = []
    while True:
        try:
            out.append(graph.pull().to_ndarray().reshape(-1))
        except (av.BlockingIOError, av.EOFError):
            break
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def tempo(x: np.ndarray, rate: float) -> np.ndarray:
    """Time-stretch by `rate` (pitch kept), FFmpeg's atempo."""
    return _filter(x, "atempo", f"{rate:.3f}")


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=dst)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(_frames(x, src))]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def telephone(x: np.ndarray) -> np.ndarray:
    """Down to 8 kHz, 300-3400 Hz band, back up to 16 kHz."""
    y = resample(x, SR, 8000)
    spec = np.fft.rfft(y)
    f = np.fft.rfftfreq(len(y), 1 / 8000)
    spec[(f < 300) | (f > 3400)] = 0
    return resample(np.fft.irfft(spec, len(y)).astype(np.float32), 8000, SR)[:len(x)]


def codec(x: np.ndarray, name: str, bitrate: int) -> np.ndarray:
    """Through a lossy codec and back (PyAV): opus, mp3 or mulaw (8 kHz wav)."""
    fmt, enc, rate = {"opus": ("ogg", "libopus", 16000), "mp3": ("mp3", "libmp3lame", 16000),
                      "mulaw": ("wav", "pcm_mulaw", 8000)}[name]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(enc, rate=rate, layout="mono")
        if name != "mulaw":
            stream.bit_rate = bitrate
        src = x if rate == SR else resample(x, SR, rate)
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        frame_size = stream.codec_context.frame_size or 1024
        for i in range(0, len(src), frame_size):
            chunk = _frames(src[i:i + frame_size], rate)
            chunk.pts = i
            for r in resampler.resample(chunk):
                for packet in stream.encode(r):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    y = decode_bytes(buf.getvalue(), max_seconds=3600)
    return np.pad(y, (0, max(0, len(x) - len(y))))[:len(x)]


def reverb(x: np.ndarray, rng: np.random.Generator, rt60: float, wet: float) -> np.ndarray:
    """Convolution with an exponentially decaying noise impulse response (a synthetic room)."""
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    h = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    h[0] = 0.0
    h /= max(np.sqrt(np.sum(h**2)), 1e-12)
    m = len(x) + n - 1
    size = 1 << (m - 1).bit_length()
    tail = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:m]
    y = np.zeros(m)
    y[:len(x)] = x
    y = (1 - wet) * y + wet * tail * rms(x) / max(rms(tail[:len(x)]), 1e-12)
    return y.astype(np.float32)


# ---------------------------------------------------------------- recipes
class Builder:
    """Places pieces on a timeline and records the reference and speech intervals."""

    def __init__(self):
        self.pieces: list[tuple[int, np.ndarray]] = []
        self.cursor = 0
        self.texts: list[str] = []
        self.speech: list[list[float]] = []
        self.parts: list[dict] = []

    def add(self, x: np.ndarray, parts: list[dict], text: str | None = None, gain_db: float = 0.0) -> None:
        at = self.cursor
        self.pieces.append((at, x * np.float32(10 ** (gain_db / 20))))
        for p in parts:
            p = dict(p)
            within = p.pop("within", 0.0)
            self.parts.append({**p, "offset": round(at / SR + within, 3), "gain_db": round(gain_db, 2)})
        if text is not None:
            self.texts.append(text)
            self.speech.append([round(at / SR, 3), round((at + len(x)) / SR, 3)])
        self.cursor += len(x)

    def pause(self, seconds: float) -> None:
        self.cursor += int(seconds * SR)

    def render(self) -> np.ndarray:
        y = np.zeros(self.cursor, np.float32)
        for at, x in self.pieces:
            y[at:at + len(x)] += x[:max(0, len(y) - at)]
        return y


def pick_speech(src: Sources, rng: random.Random, side: str, lang: str | None = None) -> str:
    pool = src.speech[side]
    if lang is not None:
        pool = [c for c in pool if src.clips[c]["lang"] == lang]
    return rng.choice(pool)


def speech_part(src: Sources, cid: str) -> dict:
    a, b = src.clips[cid]["speech"][0][0], src.clips[cid]["speech"][-1][1]
    return {"from": cid, "src_start": a, "src_duration": round(b - a, 3)}


def _gap_bed(src: Sources, rng: random.Random, side: str, seconds: float) -> tuple[np.ndarray, list[dict], float, str]:
    kind = rng.choice(("music", "ambient", "quiet", "noise"))
    x, parts = src.bed(rng, side, kind, seconds)
    level = 0.0
    if kind == "noise":
        level = rng.uniform(-55, -30)  # dBFS RMS (synthetic noise is unit RMS)
        if parts[0]["from"].startswith("synthetic:"):
            x = x * np.float32(10 ** (level / 20))
    return x, parts, level, kind


def build(src: Sources, recipe: str, k: int) -> tuple[np.ndarray, dict]:
    """Clip k of a recipe: (16 kHz samples, manifest entry without id/audio)."""
    rng = random.Random(f"{SEED}:{recipe}:{k}")
    nrng = np.random.default_rng(rng.getrandbits(32))
    side = "val" if rng.random() < 0.4 else "train"
    b = Builder()
    condition = ""
    cid = pick_speech(src, rng, side)
    lang = src.clips[cid]["lang"]
    text = src.clips[cid]["text"]
    if recipe == "longform":
        return build_longform(src, rng, side, lang)
    if recipe in ("nonspeech_then_speech", "speech_then_nonspeech", "speech_gap"):
        gap = rng.uniform(1, 20)
        bed, parts, _, kind = _gap_bed(src, rng, side, gap)
        condition = f"{kind} {gap:.1f}s"
        if recipe == "nonspeech_then_speech":
            b.add(bed, parts)
            b.pause(rng.uniform(0.0, 0.5))
            b.add(src.speech_piece(cid), [speech_part(src, cid)], text)
            b.pause(0.3)
        elif recipe == "speech_then_nonspeech":
            b.pause(rng.uniform(0.0, 0.5))
            b.add(src.speech_piece(cid), [speech_part(src, cid)], text)
            b.pause(rng.uniform(0.0, 0.5))
            b.add(bed, parts)
        else:
            b.add(src.speech_piece(cid), [speech_part(src, cid)], text)
            b.add(bed, parts)
            second = pick_speech(src, rng, side, lang)
            b.add(src.speech_piece(second), [speech_part(src, second)], src.clips[second]["text"])
            b.pause(0.3)
        y = b.render()
    elif recipe in ("speech_in_noise", "speech_in_music"):
        snr = SNRS[k % len(SNRS)]
        x = src.speech_piece(cid)
        before, after = rng.uniform(1, 3), rng.uniform(1, 3)
        b.pause(before)
        b.add(x, [speech_part(src, cid)], text)
        b.pause(after)
        kind = "noise" if recipe == "speech_in_noise" else "music"
        if kind == "noise" and rng.random() < 0.3:
            kind = "ambient"
        bed, parts = src.bed(rng, side, kind, b.cursor / SR)
        lo = int(before * SR)
        under = rms(bed[lo:lo + len(x)])
        gain_db = 20 * np.log10(max(rms(x), 1e-9) / max(under, 1e-9)) - snr
        b.cursor = 0
        b.add(bed, parts, gain_db=float(gain_db))
        b.cursor = len(bed)
        condition = f"{kind} snr={snr}"
        y = b.render()
    else:
        x = src.speech_piece(cid)
        if recipe == "tempo":
            r = round(rng.uniform(0.7, 2.5), 2)
            x = tempo(x, r)
            condition = f"tempo {r}"
        elif recipe == "clipped":
            g = rng.uniform(10, 25)
            x = np.clip(x * np.float32(10 ** (g / 20)), -1.0, 1.0)
            condition = f"clipped +{g:.0f}dB"
        elif recipe == "telephone":
            x = telephone(x)
            condition = "telephone 8k 300-3400"
        elif recipe == "codec":
            name = ("opus", "mp3", "mulaw")[k % 3]
            bitrate = {"opus": rng.choice((6000, 8000, 12000)), "mp3": rng.choice((16000, 24000)),
                       "mulaw": 64000}[name]
            x = codec(x, name, bitrate)
            condition = f"{name} {bitrate // 1000}k"
        elif recipe == "reverb":
            rt60, wet = rng.uniform(0.3, 1.5), rng.uniform(0.3, 0.8)
            x = reverb(x, nrng, rt60, wet)
            condition = f"reverb rt60={rt60:.2f} wet={wet:.2f}"
        x = x / max(1.0, float(np.max(np.abs(x))) / 0.99) if recipe != "clipped" else x
        lead = rng.uniform(0.3, 2.0)
        b.pause(lead)
        b.add(x.astype(np.float32), [speech_part(src, cid)], text)
        tail_s = rng.uniform(1.0, 6.0)
        tail, parts = src.bed(rng, side, "quiet", tail_s)
        b.add(tail, parts)
        y = b.render()
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak > 0.99 and recipe != "clipped":
        y *= np.float32(0.99 / peak)
    return y, {"kind": "mixture", "lang": lang, "text": " ".join(b.texts), "speech": b.speech,
               "category": recipe, "condition": condition, "side": side, "parts": b.parts}


def build_longform(src: Sources, rng: random.Random, side: str, lang: str) -> tuple[np.ndarray, dict]:
    """60-300 s of one language's DEV speech joined with real pauses and stretches of non-speech."""
    target = rng.uniform(60, 300)
    b = Builder()
    n_long = 0
    while b.cursor / SR < target:
        r = rng.random()
        if r < 0.25 and b.cursor > 0:  # a long stretch without speech: where Whisper invents most
            seconds = rng.uniform(5, 30)
            bed, parts, _, _ = _gap_bed(src, rng, side, seconds)
            b.add(bed, parts)
            n_long += 1
        else:
            cid = pick_speech(src, rng, side, lang)
            b.add(src.speech_piece(cid), [speech_part(src, cid)], src.clips[cid]["text"])
            pause = rng.uniform(0.3, 3.0)
            quiet, parts = src.bed(rng, side, "quiet", pause)
            b.add(quiet, parts)
    y = b.render()
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak > 0.99:
        y *= np.float32(0.99 / peak)
    return y, {"kind": "mixture", "lang": lang, "text": " ".join(b.texts), "speech": b.speech,
               "category": "longform", "condition": f"{len(y) / SR:.0f}s {n_long} non-speech stretches",
               "side": side, "parts": b.parts}


def write_flac(path: Path, x: np.ndarray) -> None:
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    tmp = path.with_suffix(".tmp.flac")
    with av.open(str(tmp), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SR, layout="mono")
        for i in range(0, len(pcm), 4096):
            frame = av.AudioFrame.from_ndarray(pcm[None, i:i + 4096], format="s16", layout="mono")
            frame.sample_rate = SR
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.replace(path)


def generate(corpus: Path, out: Path, limit: int | None = None, scale: float = 1.0) -> Path:
    """Clips 0 .. round(count x scale) - 1 of every recipe (at most `limit` each) that are not there yet."""
    src = Sources(corpus)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    entries = {}
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                entries[e["id"]] = e
    t0 = time.perf_counter()
    done = 0
    with open(manifest, "a", encoding="utf-8") as f:
        for recipe, count in RECIPES.items():
            count = round(count * scale)
            for k in range(count if limit is None else min(count, limit)):
                cid = f"hc-{recipe.replace('_', '-')}-{k:04d}"
                path = out / "audio" / f"{cid}.flac"
                if cid in entries and path.exists():
                    continue
                y, entry = build(src, recipe, k)
                write_flac(path, y)
                entry = {"id": cid, "audio": f"audio/{cid}.flac", "duration": round(len(y) / SR, 3), **entry,
                         "source": "hardcases", "license": "as DEV sources"}
                f.write(json.dumps(entry) + "\n")
                f.flush()
                done += 1
                if done % 100 == 0:
                    print(f"{done} clips, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"generated {done} new clips in {time.perf_counter() - t0:.0f} s -> {manifest}", file=sys.stderr)
    return manifest


def read(out: Path) -> list[dict]:
    """The generated manifest (last entry per id wins: a rebuilt clip replaces its old line)."""
    entries = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            e = json.loads(line)
            entries[e["id"]] = e
    return list(entries.values())


def join_recording_groups(hc_clips: dict[str, dict], clips: dict[str, dict], side: dict[str, str],
                          groups: dict[str, str]) -> None:
    """Put each hard case in the cross-validation group of the DEV speech recording it was built from
    (its first speech part; its own group when it has none), so that out-of-fold folds never hold a
    recording on one side and a clip built from it on the other. `clips`, `side` and `groups` are
    DEV's (`side` may already hold the hard cases' own sides). A clip built from a recording on the
    other side of DEV's split is an error: the hard cases predate the split and must be regenerated.
    A long-form clip joins several recordings and keeps only the first: merging all of their speech
    recordings would put 3,837 of the 6,846 train clips (DEV and both batches) in one group, leaving
    no folds."""
    for cid, c in hc_clips.items():
        sources = [p["from"] for p in c.get("parts") or [] if clips.get(p.get("from"), {}).get("kind") == "speech"]
        for src in sources:
            if side[src] != c["side"]:
                other = "validation" if side[src] == "val" else "train"
                raise SystemExit(f"hard case {cid} ({c['side']} side) was built from a {other} recording "
                                 f"({src}): regenerate the hard cases")
        groups[cid] = groups[sources[0]] if sources else cid


def summary(out: Path) -> str:
    clips = read(out)
    by = defaultdict(lambda: Counter())
    for c in clips:
        by[c["category"]][c["side"]] += 1
        by[c["category"]]["seconds"] += c["duration"]
    lines = ["| kind | clips | train | validation | hours |", "|---|---|---|---|---|"]
    for cat in RECIPES:
        if cat in by:
            n = by[cat]
            lines.append(f"| {cat} | {n['train'] + n['val']} | {n['train']} | {n['val']} | {n['seconds'] / 3600:.2f} |")
    total = sum(c["duration"] for c in clips)
    lines.append(f"| all | {len(clips)} | {sum(c['side'] == 'train' for c in clips)} | "
                 f"{sum(c['side'] == 'val' for c in clips)} | {total / 3600:.2f} |")
    langs = Counter(c["lang"] for c in clips)
    lines += ["", "Languages: " + ", ".join(f"{k} {v}" for k, v in sorted(langs.items()))]
    return "\n".join(lines) + "\n"


def extract(out: Path, model: str, cache: Path | None, max_minutes: float | None, side: str | None = None) -> Path:
    """Run the generated clips through the guard with features (cached and resumable, like DEV).

    `side`: only the clips of that side ("train": what the fits use first)."""
    from guard import corpus as runner
    from guard.config import Settings
    from guard.pipeline import Guard
    from guard.results import RequestOptions

    cache = cache or out / f"{model}-{FEATURE_SET}.jsonl"
    manifest = out / "manifest.jsonl"
    english = model.endswith(".en")  # an English-only model: the English clips only
    if english or side:
        manifest = out / f"manifest{'-en' if english else ''}{'-' + side if side else ''}.jsonl"
        manifest.write_text("".join(json.dumps(c) + "\n" for c in read(out)
                                    if (not english or c.get("lang") in ("en", None)) and side in (None, c["side"])))
    guard = Guard(Settings(model=model, max_concurrent=1), require_calibration=False)
    t0 = time.perf_counter()
    for _ in runner.run(guard, manifest, cache, options=RequestOptions(return_features=True),
                        progress=True):
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            break
    print(f"{len(runner.done_ids(cache))} clips extracted in {cache}", file=sys.stderr)
    return cache


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("generate", "extract", "summary"))
    ap.add_argument("--corpus", type=Path, default=bench_dir())
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--limit", type=int, help="generate at most this many clips per recipe")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="generate: this many times each recipe's count (2: a second batch of new clips)")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--max-minutes", type=float)
    ap.add_argument("--side", choices=("train", "val"), help="extract: only this side's clips")
    a = ap.parse_args(argv)
    if a.command == "generate":
        generate(a.corpus, a.out, a.limit, a.scale)
    elif a.command == "extract":
        extract(a.out, a.model, a.cache, a.max_minutes, a.side)
    text = summary(a.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
