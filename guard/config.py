"""All configuration in one pydantic settings object: env vars `WHISPER_GUARD_*` and CLI flags."""
from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PolicyMode(str, Enum):
    annotate = "annotate"  # score only, every segment passes
    flag = "flag"  # segments over the flag threshold are marked
    suppress = "suppress"  # segments over the suppress threshold are removed from the text


class Settings(BaseSettings):
    """Every knob of the guard. Field docs double as `--help` text."""

    model_config = SettingsConfigDict(env_prefix="WHISPER_GUARD_", env_nested_delimiter="__", extra="ignore")

    # model and inference
    model: str = Field("tiny.en", description="default model: a known name (tiny.en, base) or a CTranslate2 dir")
    models: list[str] = Field(default_factory=list, description="extra models to load and serve by name")
    allow_model_paths: bool = Field(True, description="allow --model to name a directory (never via requests)")
    model_cache: Path = Field(Path.home() / ".cache" / "whisper-guard", description="where split models are joined")
    device: Device = Field(Device.auto, description="auto picks cuda when CTranslate2 sees a GPU")
    compute_type: str = Field("default", description="CTranslate2 compute type; default = int8 on cpu, float16 on cuda")
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 intra-op threads (0 = library default)")
    probe_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads for the probe (0 = default)")
    release_memory: bool = Field(True, description="hand freed heap pages back to the OS after each analysed window "
                                 "(glibc malloc_trim): ~25 MB lower peak RSS, ~3% more CPU on long audio")
    malloc_arenas: int = Field(2, ge=0, description="glibc malloc heaps the CLI and serve allow (mallopt "
                               "M_ARENA_MAX; 0 = glibc's 8 per core; MALLOC_ARENA_MAX in the environment wins)")
    beam_size: int = Field(5, ge=1, le=16)
    temperatures: list[float] = Field(default_factory=lambda: [0.0], description="fallback ladder; [0.0] = deterministic")
    seed: int = Field(0, description="CTranslate2 sampling seed, used only when the ladder samples")
    condition_on_previous_text: bool = True
    vad: bool = Field(True, description="compute Silero VAD speech share per segment (a score feature)")

    # limits
    max_audio_seconds: float = Field(1800.0, gt=0, description="longest audio accepted (declared or decoded)")
    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0, description="largest gRPC message or HTTP request body")
    max_concurrent: int = Field(2, ge=1, description="requests running inference at once")
    max_queued: int = Field(8, ge=0, description="requests waiting for a slot; beyond: RESOURCE_EXHAUSTED")
    stream_max_seconds: float = Field(3600.0, gt=0, description="longest audio one stream may send")
    stream_buffer_chunks: int = Field(64, ge=1, description="bounded per-stream chunk queue")

    # policy
    policy: PolicyMode = PolicyMode.flag
    flag_threshold: float | None = Field(None, ge=0, le=1, description="None = calibrated default")
    suppress_threshold: float | None = Field(None, ge=0, le=1, description="None = calibrated default")
    calibration: Path | None = Field(None, description="calibration JSON from `whisper-guard calibrate`")

    # serving
    address: str = "127.0.0.1:50051"
    http_address: str = Field("", description="host:port of the OpenAI-compatible HTTP API; empty disables")
    metrics_address: str = Field("127.0.0.1:9464", description="host:port of /metrics; empty disables")
    grace_seconds: float = Field(15.0, ge=0, description="SIGTERM drain period")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA (mTLS)")
    auth_tokens: list[SecretStr] = Field(default_factory=list, description="accepted bearer tokens (metadata)")

    # verifying proxy (guard/proxy.py): an upstream OpenAI-compatible ASR writes, the guard verifies
    upstream: str | None = Field(None, description="upstream base URL as an OpenAI client takes it, "
                                                   "e.g. http://127.0.0.1:8000/v1; set = HTTP transcriptions proxy")
    upstream_model: str | None = Field(None, description="model name sent upstream (default: the client's)")
    upstream_token_file: Path | None = Field(None, description="file holding the upstream's bearer token")
    upstream_timeout: float = Field(300.0, gt=0, description="seconds to wait for the upstream's answer")
    upstream_connect_timeout: float = Field(5.0, gt=0, description="seconds to connect (and for a pooled slot)")
    upstream_max_connections: int = Field(16, ge=1, description="connection pool bound towards the upstream")
    upstream_retries: int = Field(2, ge=0, le=5, description="retries of a failed connect only (never a sent request)")

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, v: list[float]) -> list[float]:
        if not v or any(t < 0 or t > 1.5 for t in v):
            raise ValueError("temperatures must be a non-empty list of values in [0, 1.5]")
        return v

    def resolved_device(self) -> str:
        """`auto` becomes `cuda` when CTranslate2 counts a CUDA device, else `cpu`."""
        if self.device is not Device.auto:
            return self.device.value
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"

    def resolved_compute_type(self, device: str) -> str:
        if self.compute_type != "default":
            return self.compute_type
        return "float16" if device == "cuda" else "int8"
