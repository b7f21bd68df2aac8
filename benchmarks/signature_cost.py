"""Round-2 signature cost vs the first signature, on the same windows, interleaved, in one process.

    python benchmarks/signature_cost.py        # needs git: reads the round-1 guard/signature.py from commit 9759bcb
"""
import importlib.util, subprocess, sys, tempfile, time, numpy as np
import guard.pipeline as P
import guard.signature as S2
import guard.geometry as G
V1 = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
V1.write(subprocess.run(["git", "show", "9759bcb:guard/signature.py"], capture_output=True, text=True, check=True).stdout)
V1.close()
spec = importlib.util.spec_from_file_location("sig_v1", V1.name); S1 = importlib.util.module_from_spec(spec); sys.modules["sig_v1"] = S1; spec.loader.exec_module(S1)
from guard.config import Settings
from guard.results import RequestOptions
from guard.audio import decode_file
g = P.Guard(Settings(model="tiny.en", max_concurrent=1), require_calibration=False)
captured = []
orig = P.Guard._segment_features
def spy(self, bundle, window, ctx, spans, timings, *args, **kwargs):
    captured.append((bundle, window, ctx, spans)); return orig(self, bundle, window, ctx, spans, timings, *args, **kwargs)
P.Guard._segment_features = spy
for f in ["tests/fixtures/mixture-speech-then-music-36s.flac", "tests/fixtures/speech-agent-alreadyon.flac", "tests/fixtures/nonspeech-music.flac"]:
    g.transcribe(decode_file(f, max_seconds=999), RequestOptions())
def slices(bundle, window, ctx, spans):
    out = []
    for i, (seg, rows) in enumerate(zip(window.segments, g._text_rows(bundle, window, spans))):
        lo = int(np.clip((seg.start - window.start) / 0.02, 0, ctx.evidence.n_frames)); hi = int(np.clip((seg.end - window.start) / 0.02, lo, ctx.evidence.n_frames))
        out.append((rows, lo, hi, i, len(window.segments)))
    return out
def v1():
    for bundle, window, ctx, spans in captured:
        c1 = S1.WindowContext(ctx.cache, ctx.evidence, ctx.alignment_heads, ctx.token_logprob, ctx.token_entropy, ctx.token_argmax_ok)
        for s in slices(bundle, window, ctx, spans): S1.segment_features(c1, S1.SegmentSlice(*s))
def v2():
    for bundle, window, ctx, spans in captured:
        att = []
        for s in slices(bundle, window, ctx, spans):
            sl = S2.SegmentSlice(*s); S2.segment_features(ctx, sl); att.append(sl.alignment)
        G.window_context_features(att, [S2.normalise(x.text).split() for x in window.segments])
def probe():
    for bundle, window, ctx, spans in captured:
        g._probe(bundle, window, None, {"probe": 0.0, "signature": 0.0}, read_rows=np.concatenate(g._text_rows(bundle, window, spans)))
T = {"v1": [], "v2": [], "probe": []}
for _ in range(9):
    for name, fn in (("v1", v1), ("v2", v2), ("probe", probe)):
        t = time.perf_counter(); fn(); T[name].append(time.perf_counter() - t)
m = {k: float(np.median(v)) for k, v in T.items()}
print(f"windows {len(captured)}, segments {sum(len(w.segments) for _, w, _, _ in captured)}")
print(f"median over 9 interleaved rounds: probe+VAD pass {m['probe']*1e3:.1f} ms, signature v1 {m['v1']*1e3:.1f} ms, v2 (per-head, participation ratio, window context) {m['v2']*1e3:.1f} ms")
print(f"added cost: {(m['v2']-m['v1'])*1e3:.2f} ms = {(m['v2']-m['v1'])/(m['probe']+m['v1']):.2%} of probe + signature v1")
