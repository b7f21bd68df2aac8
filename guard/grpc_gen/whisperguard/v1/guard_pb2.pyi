from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PolicyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_MODE_UNSPECIFIED: _ClassVar[PolicyMode]
    POLICY_MODE_ANNOTATE: _ClassVar[PolicyMode]
    POLICY_MODE_FLAG: _ClassVar[PolicyMode]
    POLICY_MODE_SUPPRESS: _ClassVar[PolicyMode]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_PASS: _ClassVar[Verdict]
    VERDICT_FLAG: _ClassVar[Verdict]
    VERDICT_SUPPRESS: _ClassVar[Verdict]

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    GRANULARITY_SEGMENT: _ClassVar[Granularity]
    GRANULARITY_WORD: _ClassVar[Granularity]
POLICY_MODE_UNSPECIFIED: PolicyMode
POLICY_MODE_ANNOTATE: PolicyMode
POLICY_MODE_FLAG: PolicyMode
POLICY_MODE_SUPPRESS: PolicyMode
VERDICT_UNSPECIFIED: Verdict
VERDICT_PASS: Verdict
VERDICT_FLAG: Verdict
VERDICT_SUPPRESS: Verdict
GRANULARITY_UNSPECIFIED: Granularity
GRANULARITY_SEGMENT: Granularity
GRANULARITY_WORD: Granularity

class RawPcm(_message.Message):
    __slots__ = ("data", "sample_rate", "channels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sample_rate: int
    channels: int
    def __init__(self, data: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Options(_message.Message):
    __slots__ = ("model", "language", "beam_size", "policy", "flag_threshold", "suppress_threshold", "return_features", "word_timestamps", "granularity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FLAG_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SUPPRESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RETURN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    WORD_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    language: str
    beam_size: int
    policy: PolicyMode
    flag_threshold: float
    suppress_threshold: float
    return_features: bool
    word_timestamps: bool
    granularity: Granularity
    def __init__(self, model: _Optional[str] = ..., language: _Optional[str] = ..., beam_size: _Optional[int] = ..., policy: _Optional[_Union[PolicyMode, str]] = ..., flag_threshold: _Optional[float] = ..., suppress_threshold: _Optional[float] = ..., return_features: _Optional[bool] = ..., word_timestamps: _Optional[bool] = ..., granularity: _Optional[_Union[Granularity, str]] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("encoded", "pcm", "options")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pcm: RawPcm
    options: Options
    def __init__(self, encoded: _Optional[bytes] = ..., pcm: _Optional[_Union[RawPcm, _Mapping]] = ..., options: _Optional[_Union[Options, _Mapping]] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("feature", "value", "contribution")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    contribution: float
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ...) -> None: ...

class Word(_message.Message):
    __slots__ = ("word", "start_seconds", "end_seconds", "probability", "score", "verdict")
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    word: str
    start_seconds: float
    end_seconds: float
    probability: float
    score: float
    verdict: Verdict
    def __init__(self, word: _Optional[str] = ..., start_seconds: _Optional[float] = ..., end_seconds: _Optional[float] = ..., probability: _Optional[float] = ..., score: _Optional[float] = ..., verdict: _Optional[_Union[Verdict, str]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("index", "start_seconds", "end_seconds", "text", "score", "verdict", "reasons", "features", "window", "avg_logprob", "no_speech_prob", "compression_ratio", "words")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    AVG_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    NO_SPEECH_PROB_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    start_seconds: float
    end_seconds: float
    text: str
    score: float
    verdict: Verdict
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    features: _containers.ScalarMap[str, float]
    window: int
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    words: _containers.RepeatedCompositeFieldContainer[Word]
    def __init__(self, index: _Optional[int] = ..., start_seconds: _Optional[float] = ..., end_seconds: _Optional[float] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., features: _Optional[_Mapping[str, float]] = ..., window: _Optional[int] = ..., avg_logprob: _Optional[float] = ..., no_speech_prob: _Optional[float] = ..., compression_ratio: _Optional[float] = ..., words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "seconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    seconds: float
    def __init__(self, stage: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("model", "language", "policy", "audio_seconds", "processing_seconds", "queued_seconds", "timings", "segments", "flagged", "suppressed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    model: str
    language: str
    policy: PolicyMode
    audio_seconds: float
    processing_seconds: float
    queued_seconds: float
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    segments: int
    flagged: int
    suppressed: int
    def __init__(self, model: _Optional[str] = ..., language: _Optional[str] = ..., policy: _Optional[_Union[PolicyMode, str]] = ..., audio_seconds: _Optional[float] = ..., processing_seconds: _Optional[float] = ..., queued_seconds: _Optional[float] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., segments: _Optional[int] = ..., flagged: _Optional[int] = ..., suppressed: _Optional[int] = ...) -> None: ...

class TranscribeResponse(_message.Message):
    __slots__ = ("request_id", "segments", "text", "summary")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    text: str
    summary: Summary
    def __init__(self, request_id: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., text: _Optional[str] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("options", "sample_rate", "channels")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    options: Options
    sample_rate: int
    channels: int
    def __init__(self, options: _Optional[_Union[Options, _Mapping]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("config", "pcm16")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PCM16_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    pcm16: bytes
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., pcm16: _Optional[bytes] = ...) -> None: ...

class StreamSummary(_message.Message):
    __slots__ = ("summary", "text")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    summary: Summary
    text: str
    def __init__(self, summary: _Optional[_Union[Summary, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class SegmentEvent(_message.Message):
    __slots__ = ("sequence", "request_id", "segment", "summary")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    request_id: str
    segment: Segment
    summary: StreamSummary
    def __init__(self, sequence: _Optional[int] = ..., request_id: _Optional[str] = ..., segment: _Optional[_Union[Segment, _Mapping]] = ..., summary: _Optional[_Union[StreamSummary, _Mapping]] = ...) -> None: ...

class TranscriptSegment(_message.Message):
    __slots__ = ("text", "start_seconds", "end_seconds")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_SECONDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_seconds: float
    end_seconds: float
    def __init__(self, text: _Optional[str] = ..., start_seconds: _Optional[float] = ..., end_seconds: _Optional[float] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("encoded", "pcm", "transcript", "options")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pcm: RawPcm
    transcript: _containers.RepeatedCompositeFieldContainer[TranscriptSegment]
    options: Options
    def __init__(self, encoded: _Optional[bytes] = ..., pcm: _Optional[_Union[RawPcm, _Mapping]] = ..., transcript: _Optional[_Iterable[_Union[TranscriptSegment, _Mapping]]] = ..., options: _Optional[_Union[Options, _Mapping]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("request_id", "segments", "text", "summary")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    text: str
    summary: Summary
    def __init__(self, request_id: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., text: _Optional[str] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ...) -> None: ...
