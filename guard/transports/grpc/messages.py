"""Protobuf messages <-> pipeline types (options, transcripts, audio, segments, summaries)."""
from __future__ import annotations

from guard.config import PolicyMode
from guard.errors import AudioError, OptionsError, TranscriptError
from guard.grpc_gen import guard_pb2 as pb
from guard import results
from guard.intake import AudioSource, EncodedAudio, RawPcm
from guard.results import Granularity, GuardResult, RequestOptions, ScoredSegment, TranscriptSegment, Verdict, Word
from guard.serving.options import request_options, transcript_segment

POLICY_TO_PB = {
    PolicyMode.annotate: pb.POLICY_MODE_ANNOTATE,
    PolicyMode.flag: pb.POLICY_MODE_FLAG,
    PolicyMode.suppress: pb.POLICY_MODE_SUPPRESS,
}
PB_TO_POLICY = {v: k for k, v in POLICY_TO_PB.items()}
PB_TO_GRANULARITY = {pb.GRANULARITY_UNSPECIFIED: Granularity.segment, pb.GRANULARITY_SEGMENT: Granularity.segment,
                     pb.GRANULARITY_WORD: Granularity.word}
VERDICT_TO_PB = {Verdict.pass_: pb.VERDICT_PASS, Verdict.flag: pb.VERDICT_FLAG, Verdict.suppress: pb.VERDICT_SUPPRESS}


def options_from_pb(o: pb.Options) -> RequestOptions:
    """Proto options (zero = server default) to validated RequestOptions."""
    fields: dict = {"return_features": o.return_features, "word_timestamps": o.word_timestamps}
    if o.granularity not in PB_TO_GRANULARITY:
        raise OptionsError(f"options.granularity: unknown value {o.granularity}; use GRANULARITY_SEGMENT or _WORD")
    fields["granularity"] = PB_TO_GRANULARITY[o.granularity]
    if o.model:
        fields["model"] = o.model
    if o.language:
        fields["language"] = o.language
    if o.beam_size:
        fields["beam_size"] = o.beam_size
    if o.policy:
        if o.policy not in PB_TO_POLICY:
            raise OptionsError(f"options.policy: unknown value {o.policy}; use POLICY_MODE_ANNOTATE, _FLAG or _SUPPRESS")
        fields["policy"] = PB_TO_POLICY[o.policy]
    if o.HasField("flag_threshold"):
        fields["flag_threshold"] = o.flag_threshold
    if o.HasField("suppress_threshold"):
        fields["suppress_threshold"] = o.suppress_threshold
    return request_options(fields)


def transcript_from_pb(segments) -> list[TranscriptSegment]:
    if not segments:
        raise TranscriptError("transcript is empty: send at least one TranscriptSegment with text")
    return [transcript_segment({"text": s.text,
                                "start": s.start_seconds if s.HasField("start_seconds") else None,
                                "end": s.end_seconds if s.HasField("end_seconds") else None}, f"transcript[{i}]")
            for i, s in enumerate(segments)]


def audio_from_request(request, max_seconds: float) -> AudioSource:
    """The `oneof audio` of a Transcribe/Verify request, undecoded (the pipeline decodes it)."""
    kind = request.WhichOneof("audio")
    if kind is None:
        raise AudioError("no audio: set `encoded` (an audio file's bytes) or `pcm` (raw PCM16 with sample_rate)")
    if kind == "encoded":
        return EncodedAudio(request.encoded, max_seconds)
    pcm = request.pcm
    return RawPcm(pcm.data, pcm.sample_rate, pcm.channels or 1, max_seconds)


def segment_to_pb(s: ScoredSegment, with_features: bool) -> pb.Segment:
    seg = s.segment
    out = pb.Segment(
        index=seg.index, start_seconds=seg.start, end_seconds=seg.end, text=seg.text,
        score=s.score, verdict=VERDICT_TO_PB[Verdict(s.verdict)], window=max(0, seg.window),
        avg_logprob=seg.avg_logprob, no_speech_prob=seg.no_speech_prob, compression_ratio=seg.compression_ratio,
        reasons=[pb.Reason(feature=r.feature, value=r.value, contribution=r.contribution) for r in s.reasons],
    )
    if with_features and s.features:
        out.features.update({k: float(v) for k, v in s.features.items()})
    if s.words is not None:
        out.words.extend(word_to_pb(w) for w in s.words)
    return out


def word_to_pb(w: Word) -> pb.Word:
    return pb.Word(word=w.word, start_seconds=w.start, end_seconds=w.end, probability=w.probability, score=w.score,
                   verdict=VERDICT_TO_PB[Verdict(w.verdict)])


def kept_text(segments: list[ScoredSegment], granularity: Granularity = Granularity.segment) -> str:
    """The transcript without suppressed segments, or suppressed words (the same rule as GuardResult.text)."""
    return results.kept_text(segments, granularity)


def summary_to_pb(result: GuardResult, segments: list[ScoredSegment], processing: float, queued: float) -> pb.Summary:
    return pb.Summary(
        model=result.model, language=result.language or "", policy=POLICY_TO_PB[PolicyMode(result.policy)],
        audio_seconds=result.audio_seconds, processing_seconds=processing, queued_seconds=queued,
        timings=[pb.StageTiming(stage=k, seconds=v) for k, v in result.timings.items()],
        segments=len(segments),
        flagged=sum(1 for s in segments if s.verdict is Verdict.flag),
        suppressed=sum(1 for s in segments if s.verdict is Verdict.suppress),
    )
