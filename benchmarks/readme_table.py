"""Print the README's detection tables from benchmarks/results/detection-<model>.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUBSETS = ["all", "clips that hold speech (speech + mixture)", "English + non-speech clips (the held-out check's population)",
           "English clips that hold speech", "stress mixtures", "shared window (speech + hallucination)"]
SHORT = {"clips that hold speech (speech + mixture)": "holds speech",
         "English + non-speech clips (the held-out check's population)": "English + non-speech",
         "English clips that hold speech": "English, holds speech", "shared window (speech + hallucination)": "shared window",
         "stress mixtures": "stress"}
DETECTORS = ("whisper-guard (", "six-feature", "confidence-only", "no_speech_prob", "Silero", "avg_logprob")


def table(model: str) -> str:
    r = json.loads((RESULTS / f"detection-{model}.json").read_text())
    cols = [s for s in SUBSETS if s in r["table"]]
    def n(s: str) -> str:
        m = r["table"][s][next(iter(r["table"][s]))]
        return f"{SHORT.get(s, s)} ({m['n']}, {m['hallucinated']})"

    head = "| detector | " + " | ".join(n(s) for s in cols) + " |"
    lines = [f"**{model}**: {r['guard_fit']['val_clips']} validation clips, {r['guard_fit']['val_segments']} segments "
             f"({r['table']['all'][next(iter(r['table']['all']))]['hallucinated']} hallucinated); AUROC / TPR at 1% FPR; "
             "columns: stratum (segments, hallucinated)",
             "", head, "|---" * (len(cols) + 1) + "|"]
    for det in r["table"]["all"]:
        if not det.startswith(DETECTORS):
            continue
        cells = []
        for s in cols:
            m = r["table"][s][det]
            cells.append(f"{m['auroc']:.3f} / {m['tpr_at_fpr_1pct']:.3f}")
        name = f"**{det}**" if det.startswith("whisper-guard (") or det.startswith("six-feature") else det
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    p = r["policy"]
    lines += ["", f"Default policy on the same validation segments: flag threshold {p['flag']['threshold']:.3f} flags "
              f"{p['flag']['recall']:.1%} of hallucinated segments at {p['flag']['false_rate_grounded']:.2%} of grounded ones; "
              f"suppress threshold {p['suppress']['threshold']:.3f} removes {p['suppress']['hallucinated_words_removed']:.1%} of "
              f"hallucinated words ({p['suppress']['nonspeech_hallucinated_words_removed']:.1%} on non-speech clips) and "
              f"{p['suppress']['grounded_words_removed']:.2%} of grounded words, suppressing "
              f"{p['suppress']['false_rate_grounded']:.2%} of grounded segments."]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(m) for m in (sys.argv[1:] or ["tiny.en"])))
