"""The hard-case generator (benchmarks/hardcases.py) on a small corpus built from the fixtures:
deterministic, intervals inside the clip, one side of the split per clip, the labelling rule applies."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from conftest import MUSIC, ROOT, SFX, SPEECH, SPEECH_TEXT

sys.path.insert(0, str(ROOT / "benchmarks"))
import hardcases  # noqa: E402

from guard.audio import decode_file  # noqa: E402
from guard.calibrate import split  # noqa: E402
from guard.labels import label_segments  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Twelve 'recordings' (copies of the fixtures under their own ids), in the DEV manifest format."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    speech_len = len(decode_file(SPEECH, max_seconds=60)) / 16000
    lines = []
    for k in range(6):
        shutil.copy(SPEECH, root / "audio" / f"s{k}.flac")
        lines.append({"id": f"speech-{k}", "audio": f"audio/s{k}.flac", "kind": "speech", "lang": "en",
                      "text": SPEECH_TEXT, "speech": [[0.05, round(speech_len - 0.05, 3)]], "category": "prompt"})
    for k, (src, cat) in enumerate([(MUSIC, "music"), (SFX, "sfx"), (MUSIC, "near_silence"), (SFX, "noise"),
                                    (MUSIC, "ambient"), (SFX, "music")] * 2):
        shutil.copy(src, root / "audio" / f"n{k}.flac")
        lines.append({"id": f"non-{k}", "audio": f"audio/n{k}.flac", "kind": "nonspeech", "lang": None, "text": "",
                      "speech": [], "category": cat})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.mark.parametrize("recipe", list(hardcases.RECIPES))
def test_a_clip_is_deterministic_and_its_intervals_fit(corpus, recipe):
    src = hardcases.Sources(corpus)
    side = split(src.clips)
    for k in range(2):
        y1, e1 = hardcases.build(src, recipe, k)
        y2, e2 = hardcases.build(hardcases.Sources(corpus), recipe, k)  # a fresh process would get the same
        np.testing.assert_array_equal(y1, y2)
        assert e1 == e2
        duration = len(y1) / hardcases.SR
        assert e1["speech"] and all(0 <= a < b <= duration + 1e-3 for a, b in e1["speech"])
        assert e1["text"].startswith(SPEECH_TEXT)
        assert np.isfinite(y1).all() and np.abs(y1).max() <= 1.0
        used = {p["from"] for p in e1["parts"] if not p["from"].startswith("synthetic:")}
        assert {side[cid] for cid in used} == {e1["side"]}  # no recording from the other side


def test_generate_resumes_and_labels_apply(corpus, tmp_path):
    out = tmp_path / "hc"
    hardcases.generate(corpus, out, limit=1)
    first = {c["id"]: c for c in hardcases.read(out)}
    assert len(first) == len(hardcases.RECIPES)
    stamp = {cid: (out / c["audio"]).stat().st_mtime_ns for cid, c in first.items()}
    hardcases.generate(corpus, out, limit=1)  # nothing to redo
    assert {cid: (out / c["audio"]).stat().st_mtime_ns for cid, c in first.items()} == stamp
    clip = first["hc-speech-then-nonspeech-0000"]
    a, b = clip["speech"][0]
    rows = label_segments({clip["id"]: clip}, [
        {"id": clip["id"], "start": a, "end": b, "text": SPEECH_TEXT},
        {"id": clip["id"], "start": clip["duration"] - 1.0, "end": clip["duration"], "text": "Thanks for watching!"}])
    labels = {r["text"]: r["label"] for r in rows}
    assert labels[SPEECH_TEXT] == 0
    if clip["duration"] - 1.0 > b + 1.0:  # the tail lies outside the widened interval
        assert labels["Thanks for watching!"] == 1


def test_scale_adds_new_clips_and_keeps_the_first(corpus, tmp_path, monkeypatch):
    """`--scale 2`: a second batch (clips k = count .. 2 count - 1), built from fresh seeds; batch one's clips
    are the same bytes as before."""
    monkeypatch.setattr(hardcases, "RECIPES", {"speech_gap": 1, "tempo": 1})
    one, two = tmp_path / "one", tmp_path / "two"
    hardcases.generate(corpus, one)
    hardcases.generate(corpus, two, scale=2)
    first, both = {c["id"] for c in hardcases.read(one)}, {c["id"] for c in hardcases.read(two)}
    assert first == {"hc-speech-gap-0000", "hc-tempo-0000"}
    assert both == first | {"hc-speech-gap-0001", "hc-tempo-0001"}
    for cid in first:
        assert (one / "audio" / f"{cid}.flac").read_bytes() == (two / "audio" / f"{cid}.flac").read_bytes()
    new = [decode_file(two / "audio" / f"hc-{r}-{k:04d}.flac", max_seconds=600) for r in ("speech-gap", "tempo")
           for k in (0, 1)]
    assert not np.array_equal(new[0], new[1]) and not np.array_equal(new[2], new[3])


def test_word_training_hard_cases_join_their_recordings_group(corpus, tmp_path):
    """benchmarks/word_scores.py trains on hard cases from train recordings only: each joins the
    out-of-fold group of the DEV recording it was built from, and one built from a validation
    recording is refused."""
    import word_scores

    from guard.calibrate import groups_of
    from guard.corpus import read_manifest

    out = tmp_path / "hc"
    hardcases.generate(corpus, out, limit=1)
    clips = {c["id"]: c for c in read_manifest(corpus / "manifest.jsonl")}
    side, groups = split(clips), groups_of(clips)
    hc = [c for c in hardcases.read(out) if word_scores.hardcase_train("tiny.en", c)]
    assert hc and all(c["side"] == "train" for c in hc)
    cache = tmp_path / "words-hc.jsonl"
    cache.write_text("".join(json.dumps({"id": c["id"], "segments": []}) + "\n" for c in hc))
    assert word_scores.hardcase_rows("tiny.en", out, cache, clips, side, groups) == []  # no words in this cache
    for c in hc:
        source = next(p["from"] for p in c["parts"] if clips.get(p["from"], {}).get("kind") == "speech")
        assert groups[c["id"]] == groups[source]
    flipped = {**side, source: "val"}
    with pytest.raises(SystemExit, match="validation recording"):
        word_scores.hardcase_rows("tiny.en", out, cache, clips, flipped, groups_of(clips))


def test_detection_folds_never_split_a_recording_from_its_hard_cases(corpus, tmp_path):
    """benchmarks/detection.py's grouped CV (family, L2 and the default thresholds from out-of-fold
    scores): every hard case shares the fold of the DEV speech recording it was built from. Before,
    each hard case was its own group, so a fold could test a recording whose noisy copies it trained on."""
    import detection

    from guard.calibrate import group_folds
    from guard.corpus import read_manifest

    out = tmp_path / "hc"
    hardcases.generate(corpus, out, limit=1)
    dev = read_manifest(corpus / "manifest.jsonl")
    clips = {c["id"]: c for c in dev}
    hc = hardcases.read(out)

    def cache(path, entries):
        path.write_text("".join(json.dumps({"id": c["id"], "timings": {}, "duration": 1.0, "segments": []}) + "\n"
                                for c in entries))
        return path

    _, _, _, side, groups = detection.population(
        "tiny.en", corpus, cache(tmp_path / "dev.jsonl", dev), out, cache(tmp_path / "hc.jsonl", hc))
    fold = dict(zip(groups, group_folds([{"id": cid} for cid in groups], groups, 5)))
    with_speech = 0
    for c in hc:
        if c.get("lang") not in ("en", None):
            continue
        sources = [p["from"] for p in c["parts"] if clips.get(p["from"], {}).get("kind") == "speech"]
        assert side[c["id"]] == c["side"] and all(side[s] == c["side"] for s in sources)
        if sources:
            with_speech += 1
            assert groups[c["id"]] == groups[sources[0]] and fold[c["id"]] == fold[sources[0]]
        else:
            assert groups[c["id"]] == c["id"]
    assert with_speech >= 5
