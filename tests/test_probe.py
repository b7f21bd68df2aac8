"""The probe is the model: its teacher-forced decoder reproduces CTranslate2's greedy decoding.

For tiny.en and base, CTranslate2 (float32, no token suppression, so its choices are the raw
argmax) greedily decodes real speech; the ONNX probe, fed the same encoder output and tokens,
must pick every one of those tokens as its argmax and give the same log-probabilities within
LOGPROB_TOL. With int8 CTranslate2 (the CPU default) the probe reads float weights, so we state a
looser agreement instead.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import LONG, SPEECH

from guard.asr import Transcriber
from guard.config import Settings
from guard.models import resolve
from guard.probe.runner import Probe

LOGPROB_TOL = 2e-3  # nats, per token; float32 on both sides, different kernels and summation order


def _greedy(name: str, compute_type: str, audio: np.ndarray):
    settings = Settings(model=name, compute_type=compute_type)
    resolved = resolve(name, cache=settings.model_cache)
    transcriber = Transcriber(resolved, settings)
    encoded, encoder_output, _ = transcriber.encode(audio[: 30 * 16000])
    tok = transcriber.tokenizer("en")
    prompt = list(tok.sot_sequence) + [tok.no_timestamps]
    res = transcriber.ct2.generate(encoded, [prompt], beam_size=1, return_logits_vocab=True, suppress_blank=False,
                                   suppress_tokens=[], max_length=448)[0]
    ids = list(res.sequences_ids[0])
    logits = np.stack([np.asarray(step).reshape(-1) for step in res.logits[0]]).astype(np.float64)
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    targets = np.array(ids + [tok.eot])
    probe = Probe(resolved.path / "model.bin")
    seq = prompt + ids
    rows = np.arange(len(prompt) - 1, len(seq))
    cache = probe.run(seq, encoder_output, rows, targets)
    return ids, targets, logp, cache, probe


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_probe_reproduces_ctranslate2_greedy_decoding(name, load_audio):
    audio = load_audio(SPEECH)
    ids, targets, logp, cache, probe = _greedy(name, "float32", audio)
    assert len(ids) >= 10, "the speech clip must decode to a real sentence"
    np.testing.assert_array_equal(cache["logits.argmax"], targets)  # every token, and the end of text
    ct2_lp = logp[np.arange(len(targets)), targets]
    np.testing.assert_allclose(cache["logits.target_logprob"], ct2_lp, atol=LOGPROB_TOL)
    layers, heads = probe.dims["layers"], probe.dims["heads"]
    patterns = cache.patterns()
    n_inputs = int(cache.rows[-1]) + 1  # prompt + emitted tokens
    assert patterns.shape == (layers, heads, n_inputs, 1500)
    np.testing.assert_allclose(patterns.sum(-1), 1.0, atol=1e-4)  # attention rows are distributions
    assert cache.outs().shape[-1] == probe.dims["d_model"]


def test_probe_agrees_with_int8_ctranslate2_within_stated_tolerance(load_audio):
    ids, targets, logp, cache, _ = _greedy("tiny.en", "int8", load_audio(SPEECH))
    agree = (cache["logits.argmax"] == targets).mean()
    gap = np.abs(cache["logits.target_logprob"] - logp[np.arange(len(targets)), targets])
    assert agree >= 0.9, f"int8 argmax agreement {agree:.2f}"
    assert np.median(gap) < 0.05, f"median |dlogp| {np.median(gap):.3f}"


def test_probe_adds_no_encoder_run(guard, load_audio):
    """Each window is encoded once (by the transcriber); the probe reuses that output."""
    from guard.results import RequestOptions

    bundle = guard.bundle("tiny.en")
    encodes, probes = bundle.transcriber.encode_calls, bundle.probe.runs
    result = guard.transcribe(load_audio(LONG), RequestOptions())
    windows = len({s.segment.window for s in result.segments})
    assert windows >= 2, "the 36 s fixture spans two windows"
    n_encoded = bundle.transcriber.encode_calls - encodes
    n_probed = bundle.probe.runs - probes
    assert n_encoded == n_probed  # one probe pass per encoded window, no extra encoding
    assert windows <= n_encoded <= 3  # 36 s of audio: two or three windows, each encoded once
