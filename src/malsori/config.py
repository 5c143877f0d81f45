"""One settings object for the whole service (pydantic-settings).

Every field can be set from the environment with the ``MALSORI__`` prefix and ``__`` between
sections, e.g. ``MALSORI__ENGINE__COMPUTE_TYPE=int8`` or ``MALSORI__SERVER__PORT=9000``. Built once in
``create_app(settings)`` or the CLI, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .engine.models import default_cache_dir
from .engine.transcriber import AUTO_BATCH

if TYPE_CHECKING:
    from .engine import EngineConfig

__all__ = [
    "Settings",
    "EngineSettings",
    "ServerSettings",
    "StorageSettings",
    "LimitSettings",
    "StreamingSettings",
    "AuthSettings",
    "TenantLimits",
    "QueueSettings",
    "AnalysisSettings",
]


class EngineSettings(BaseModel):
    model: str = "base"
    """Bundled name (base, tiny.en), faster-whisper model name, or local CTranslate2 directory."""
    device: str = "auto"
    """auto, cpu or cuda."""
    compute_type: str = "auto"
    """auto (int8 on CPU, float16 on CUDA) or a CTranslate2 compute type."""
    cpu_threads: int = 0
    """CPU threads per decode; 0 shares the cores out between the workers."""
    num_workers: int = 0
    """Decodes the model may run at once; 0: two on a CPU with two cores or more (one thread each on two
    cores: two one-thread decodes do more than one two-thread decode, and a live final does not wait
    behind a batch of partials; docs/benchmarks.md "Decoders side by side"), one on CUDA."""
    max_batch_size: int = Field(default=0, ge=0)
    """Windows decoded together in one call; 0: two on a CPU with AMX int8 (Intel Xeon, 4th generation and
    later), where batching costs more than it saves, eight otherwise (``engine.transcriber.auto_batch_size``)."""
    live_final_batch: int = Field(default=0, ge=0)
    """Live finals decoded together at most; 0: one at a time on a CPU, as many as other live windows (half
    of ``max_batch_size``) on a GPU. On a CPU a batch costs about the sum of its windows padded to the
    longest, and each final waits for the whole batch: 24 rotated streams on 2 cores, final p95 1.82 s one
    at a time against 2.47 s in batches of up to 4, medians of 3 (docs/benchmarks.md "Live capacity")."""
    blas_threads: int = 1
    """Threads numpy's BLAS may use (0: its own default, a thread per core). One: the decodes compute on
    CTranslate2's threads, and idle OpenBLAS threads spin on the cores they need (docs/benchmarks.md
    "Live capacity")."""
    beam_size: int = 5
    """Default beam size for files and requests."""
    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Where joined bundled models and downloads are kept."""
    detector_model: str = "tiny.en"
    """Model for the Whisper-based speech detector of POST /detect (detector=whisper)."""

    def batch_size(self, decoder: object) -> int:
        """``max_batch_size`` for a scheduler in front of ``decoder``: the setting, else what the loaded
        model picked for its device, else (remote workers, fakes) the usual eight."""
        return self.max_batch_size or int(getattr(decoder, "max_batch_size", 0) or AUTO_BATCH)

    def final_batch(self, device: str | None) -> int | None:
        """``live_final_batch`` for a model on ``device`` (a scheduler's ``urgent_batch``); ``device``
        None: not known (a live gateway's remote workers), so finals are batched unless configured."""
        return self.live_final_batch or (1 if device == "cpu" else None)


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    data_dir: Path = Path("data")
    """Where the SQLite database and job uploads live."""
    media_dir: Path | None = None
    """Local directory that /stt/process may read `audio_url` paths from (none: local paths refused)."""
    allow_private_urls: bool = False
    """Let /stt/process fetch from private and loopback addresses (off: refused, against SSRF)."""
    cors_origins: list[str] = []
    """Origins allowed to call the API from a browser (the bundled page needs none)."""
    drain_timeout_s: float = Field(default=20.0, ge=0)
    """On SIGTERM, how long live sessions get to finish (their last finals sent) before the server stops."""
    malloc_arenas: int = Field(default=2, ge=0)
    """glibc malloc arenas for `malsori serve` (0: glibc's default of 8 per core). Few arenas keep
    resident memory flat over hours of threaded decoding (malsori.memory)."""
    log_format: Literal["text", "json"] = "text"
    """``malsori serve``'s log lines: text, or one JSON object per line; both carry request ids and mask keys and tokens."""
    malloc_mmap_threshold_kb: int = Field(default=4096, ge=0)
    """glibc malloc: blocks of this many KiB and more get a mapping of their own, returned to the system
    when freed (0: glibc's moving threshold). Keeps the model's per-batch workspaces out of the heap (malsori.memory)."""
    memory_trim_interval_s: float = Field(default=60.0, ge=0)
    """How often free heap memory is handed back to the system (0: never)."""


class StorageSettings(BaseModel):
    url: str | None = None
    """SQLAlchemy URL (sqlite:///..., postgresql+psycopg://...). Default: SQLite in data_dir."""
    retention_days: float = Field(default=0.0, ge=0)
    """Delete finished jobs (audio and transcript) and ended meetings this many days after they
    finished, checked hourly (0: keep them until deleted with DELETE /v1/jobs/{id}?purge=true)."""


class LimitSettings(BaseModel):
    max_upload_bytes: int = 100 * 1024 * 1024
    """Largest accepted upload (bytes)."""
    max_audio_seconds: float = 3600.0
    """Longest accepted audio (seconds), counted on the decoded samples (a tiny file that decodes to
    hours stops here)."""
    body_timeout_s: float = Field(default=60.0, ge=0)
    """Longest wait for the next piece of a request body before the request is dropped with 408
    (slow-loris uploads hold a connection and memory otherwise; 0: wait forever)."""
    max_channels: int = Field(default=32, ge=1)
    """Most channels an uploaded file may have (more: 415)."""
    max_input_sample_rate: int = Field(default=384_000, ge=8000)
    """Highest sample rate an uploaded file may have, in Hz (higher: 415)."""
    max_pending_requests: int = 64
    """Short requests waiting for the model before new ones get 429."""
    max_pending_jobs: int = 1000
    """Jobs waiting before new ones get 429."""
    job_workers: int = Field(default=1, ge=1)
    """Jobs run at once. Their windows share the one model through the scheduler (behind live
    streams and requests), so more workers mostly help a GPU keep its batches full."""
    sync_max_seconds: float = 600.0
    """Longest audio transcribed inside one synchronous request (longer: use /v1/jobs)."""


class StreamingSettings(BaseModel):
    max_sessions: int = 16
    """Live sessions at once; further ones are refused with close code 1013."""
    resume_grace_s: float = 30.0
    """How long a session waits for its client to reconnect after a dropped connection."""
    default_preset: str = "balanced"
    """low-latency, balanced, accurate or korean."""
    max_frame_bytes: int = 1024 * 1024
    """Largest binary audio frame accepted."""
    idle_timeout_s: float = Field(default=120.0, ge=0)
    """A socket that sends nothing for this long (before its session is stopping) is closed with
    ``idle_timeout`` (1008), so idle or stalled connections do not hold session slots (0: never)."""
    stats_interval_s: float = Field(default=1.0, gt=0, le=2.0)
    """How often a session started with ``stats`` gets a ``stats`` event (also after each final)."""


class TenantLimits(BaseModel):
    """Limits of one tenant and its keys (0: none). docs/security.md."""

    requests_per_minute: int = Field(default=0, ge=0)
    """Requests a tenant may make per minute, all its keys together."""
    key_requests_per_minute: int = Field(default=0, ge=0)
    """Requests one key may make per minute (a key created with its own limit uses that)."""
    live_sessions: int = Field(default=0, ge=0)
    """Live sessions a tenant may have open at once (on this gateway)."""
    audio_minutes_per_day: float = Field(default=0.0, ge=0)
    """Minutes of audio a tenant may have transcribed per UTC day."""


class AuthSettings(BaseModel):
    """Who may use the service (docs/security.md). Keys are made with ``malsori keys create`` or the
    admin API; once one exists, every request needs a key (or, for sockets, a token)."""

    admin_key: str | None = None
    """With no API keys: when set, changing settings from the control panel requires this key."""
    allow_open: bool = False
    """Serve on an address other than loopback with no API key configured (anyone who can reach
    the port can then use everything). Off: such a server refuses to start."""
    token_ttl_s: float = Field(default=60.0, gt=0, le=3600)
    """Lifetime of a WebSocket token from POST /v1/tokens (it must be used to connect within it)."""
    limits: TenantLimits = TenantLimits()
    """Limits of every tenant that has no entry of its own in ``tenant_limits``."""
    tenant_limits: dict[str, TenantLimits] = {}
    """Limits by tenant id, e.g. ``MALSORI__AUTH__TENANT_LIMITS='{"acme": {"requests_per_minute": 600}}'``."""
    public_metrics: bool = False
    """Serve /metrics without a key even when keys exist (counts only, no tenant or text): for a
    Prometheus on a private network, with /metrics kept off the public side (deploy/nginx does)."""


class AnalysisSettings(BaseModel):
    """Sentiment of texts, finals and segments (malsori.analysis; the ``analysis`` extra)."""

    sentiment_model: str = "auto"
    """``auto`` (VADER for English, e5 for other languages), ``e5`` (multilingual-e5-small + MLP head,
    bundled), ``vader`` (English lexicon) or ``keywords`` (a keyword fake, for tests)."""
    threads: int = Field(default=1, ge=1, le=64)
    """CPU threads of the sentiment model (1: it runs beside Whisper, whose decodes matter more)."""
    max_texts: int = Field(default=64, ge=1)
    """Most texts one POST /v1/analysis/sentiment may send."""
    max_text_chars: int = Field(default=2000, ge=1)
    """Longest text (characters) it may send."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Scaled out: longest a gateway waits for a worker of the ``analyze`` queue to answer."""


class QueueSettings(BaseModel):
    """Scale-out over Celery and Redis (docs/scaling.md). With no ``broker_url`` (the default) nothing
    here is used: one process runs everything through its own scheduler."""

    broker_url: str | None = None
    """Celery broker, e.g. ``redis://127.0.0.1:6379/0``. Set: file jobs, synchronous HTTP
    transcriptions and live windows go to ``malsori worker`` processes, and live sessions are kept in
    Redis (any gateway resumes them); unset: the in-process scheduler runs everything."""
    result_backend: str | None = None
    """Celery result backend; default: the broker URL."""
    redis_url: str | None = None
    """Redis for the worker registry, the routing mode, counters, live sessions and windows; default: the broker URL."""
    cpu_queue: str = "stt.cpu"
    """Queue of CPU workers."""
    gpu_queue: str = "stt.gpu"
    """Queue of GPU workers (``auto`` routing prefers it while a GPU worker is alive)."""
    analyze_queue: str = "analyze"
    """Queue of analysis tasks."""
    key_prefix: str = "malsori"
    """Prefix of every Redis key this service writes (several deployments can share one Redis)."""
    heartbeat_s: float = Field(default=2.0, gt=0)
    """How often a worker announces itself."""
    worker_ttl_s: float = Field(default=10.0, gt=0)
    """A worker not heard from for this long is dead: its running jobs are given to another worker."""
    concurrency: int = Field(default=2, ge=1)
    """Tasks one worker runs at once (threads sharing its one model and scheduler, so their windows batch)."""
    visibility_timeout_s: float = Field(default=3600.0, gt=0)
    """Redis transport: an unacknowledged task is delivered again after this long (tasks are idempotent)."""
    request_timeout_s: float = Field(default=600.0, gt=0)
    """Longest a gateway waits for a worker to decode a synchronous request's windows."""
    live_timeout_s: float = Field(default=15.0, gt=0)
    """Longest a gateway waits for a worker to answer a batch of live windows; then it asks again (a
    worker that died with them, Redis restarted). Under it: a long window queued behind others."""
    metrics_port: int = 0
    """Port of a worker's Prometheus /metrics (0: none)."""
    worker_decoder: str = "model"
    """``model`` (the configured Whisper model) or ``fake`` (engine.fake.FakeDecoder, for routing tests)."""
    worker_device: str | None = None
    """Device a worker announces instead of its model's (a fake decoder announcing ``cuda`` in tests)."""
    fake_error: str | None = None
    """For tests: every decode of the fake decoder raises RuntimeError with this message (a failing GPU)."""

    def broker(self) -> str:
        if not self.broker_url:
            raise ValueError("no broker is configured (MALSORI__QUEUE__BROKER_URL)")
        return self.broker_url

    def backend(self) -> str:
        return self.result_backend or self.broker()

    def redis(self) -> str:
        return self.redis_url or self.broker()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MALSORI__", env_nested_delimiter="__", extra="ignore")

    engine: EngineSettings = EngineSettings()
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    limits: LimitSettings = LimitSettings()
    streaming: StreamingSettings = StreamingSettings()
    auth: AuthSettings = AuthSettings()
    queue: QueueSettings = QueueSettings()
    analysis: AnalysisSettings = AnalysisSettings()

    def engine_config(self, model: str | None = None) -> EngineConfig:
        """The engine's configuration from these settings (``model``: another model, same engine settings)."""
        from .engine import EngineConfig

        e = self.engine
        return EngineConfig(
            model=model or e.model,
            device=e.device,
            compute_type=e.compute_type,
            cpu_threads=e.cpu_threads,
            num_workers=e.num_workers,
            max_batch_size=e.max_batch_size,
            blas_threads=e.blas_threads,
            cache_dir=e.cache_dir,
        )

    def database_url(self) -> str:
        if self.storage.url:
            return self.storage.url
        return f"sqlite:///{(self.server.data_dir / 'malsori.db').resolve()}"
