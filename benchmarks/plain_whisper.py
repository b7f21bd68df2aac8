"""Plain faster-whisper as a user runs it: the baseline process of `overhead.py --whole-process`.

    python benchmarks/plain_whisper.py MODEL_DIR FILE [--same-as-guard] [--load-on-thread]

Default: `WhisperModel(dir, device="cpu", compute_type="int8").transcribe(FILE, beam_size=5)`,
every segment consumed (faster-whisper's defaults: temperature ladder, `no_speech_threshold=0.6`,
so a window it judges silent is skipped). `--same-as-guard` decodes with the guard's settings
(one temperature, never skip), i.e. exactly the transcript the guard guards. `--load-on-thread`
constructs the model on a short-lived thread, as the guard does (CTranslate2 then decodes with both
cores of a 2-core host busy; see benchmarks/whole_process.py).

Prints the text on stdout; on stderr one JSON line: windows decoded and windows skipped (the
skip rule is faster-whisper's own, re-evaluated on each window's decode result).
"""
from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from faster_whisper import WhisperModel


def main(argv: list[str]) -> int:
    model_dir, path = argv[0], argv[1]
    same = "--same-as-guard" in argv[2:]
    if "--load-on-thread" in argv[2:]:
        with ThreadPoolExecutor(max_workers=1) as loader:
            model = loader.submit(WhisperModel, model_dir, device="cpu", compute_type="int8").result()
    else:
        model = WhisperModel(model_dir, device="cpu", compute_type="int8")
    decoded: list[tuple[float, float]] = []
    inner = model.generate_with_fallback

    def counted(*args, **kwargs):
        out = inner(*args, **kwargs)
        decoded.append((float(out[0].no_speech_prob), float(out[1])))
        return out

    model.generate_with_fallback = counted
    kwargs = {"temperature": [0.0], "no_speech_threshold": None} if same else {}
    segments, _info = model.transcribe(path, beam_size=5, **kwargs)
    text = "".join(s.text for s in segments).strip()
    print(text)
    skipped = 0 if same else sum(1 for nsp, lp in decoded if nsp > 0.6 and lp <= -1.0)
    print(json.dumps({"windows": len(decoded), "skipped": skipped}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
