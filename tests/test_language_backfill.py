"""benchmarks/language_backfill.py: a cache extracted before `lang.prob` existed gets, per clip, exactly the
value the guard computes now (real base model, a real one-clip corpus run), resumably, and detection's
loader fills only segments that lack it."""
from __future__ import annotations

import json
import shutil
import sys

from conftest import ROOT, SPEECH

sys.path.insert(0, str(ROOT / "benchmarks"))
import language_backfill  # noqa: E402


def test_backfill_gives_the_value_the_guard_computes_and_the_loader_fills_only_what_lacks_it(tmp_path):
    from guard import corpus as runner
    from guard.config import Settings
    from guard.pipeline import Guard
    from guard.results import RequestOptions

    (tmp_path / "audio").mkdir()
    shutil.copy(SPEECH, tmp_path / "audio" / "a.flac")
    shutil.copy(SPEECH, tmp_path / "audio" / "b.flac")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": cid, "audio": f"audio/{cid}.flac", "kind": "speech",
                                            "lang": "en", "text": "x"}) + "\n" for cid in ("a", "b")))
    cache = tmp_path / "base-sig2.jsonl"
    guard = Guard(Settings(model="base", max_concurrent=1), require_calibration=False)
    lines = list(runner.run(guard, manifest, cache, options=RequestOptions(return_features=True)))
    now = {line["id"]: [{f: s["features"][f] for f in language_backfill.FEATURES} for s in line["segments"]]
           for line in lines}
    assert set(now) == {"a", "b"} and all(now.values())
    assert 0.5 < now["a"][0]["lang.prob"] <= 1.0 and 0 < now["a"][0]["lang.margin"] < now["a"][0]["lang.prob"]
    # make "a" look like a row extracted before the feature existed; "b" keeps its own value
    rows = [json.loads(x) for x in cache.read_text().splitlines()]
    for r in rows:
        for s in r["segments"]:
            if r["id"] == "a":
                del s["features"]["lang.prob"], s["features"]["lang.margin"]
            else:  # "b": extracted with lang.prob but before lang.margin; -1: a value the loader must keep
                s["features"]["lang.prob"] = -1.0
                del s["features"]["lang.margin"]
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert language_backfill.missing(cache) == ["a", "b"]

    assert language_backfill.main(["--model", "base", "--manifest", str(manifest), "--cache", str(cache)]) == 0
    values = language_backfill.read(cache)
    assert values == {"a": now["a"][0], "b": now["b"][0]}  # exactly what the guard computes for each clip
    side = language_backfill.side_file(cache).read_text()
    assert language_backfill.main(["--model", "base", "--manifest", str(manifest), "--cache", str(cache)]) == 0
    assert language_backfill.side_file(cache).read_text() == side  # resumable: nothing redone

    segments, _ = runner.load(cache)
    assert language_backfill.fill(segments, values) == 2 * len(now["a"]) + len(now["b"])
    got = {s["id"]: {f: s["features"][f] for f in language_backfill.FEATURES} for s in segments}
    assert got == {"a": now["a"][0], "b": {"lang.prob": -1.0, "lang.margin": now["b"][0]["lang.margin"]}}
