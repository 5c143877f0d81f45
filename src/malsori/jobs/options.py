"""What a job was asked to do, as stored with it (a JSON object in the job row)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..engine.options import TranscribeOptions
from ..errors import InvalidOptionsError
from ..formats import normalize_format
from ..speakers import DiarizeOptions

__all__ = ["JobOptions", "JobIds"]

_ID_MAX = 256


@dataclass(frozen=True)
class JobIds:
    """Who and what a job belongs to; listings filter by tenant and meeting."""

    tenant_id: str | None = None
    meeting_id: str | None = None
    user_id: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not isinstance(value, str):
                raise InvalidOptionsError(f"{f.name} must be a string")
            if value is not None and len(value) > _ID_MAX:
                raise InvalidOptionsError(f"{f.name} is too long ({len(value)} characters, at most {_ID_MAX})")
            if value == "":
                object.__setattr__(self, f.name, None)


@dataclass(frozen=True)
class JobOptions:
    """Decoding choices of one job, validated when it is submitted (InvalidOptionsError)."""

    language: str | None = None
    """Language code, or None to detect it."""
    task: str = "transcribe"
    """transcribe, or translate to English."""
    prompt: str | None = None
    """Text that precedes the audio (names, spelling)."""
    word_timestamps: bool = False
    response_format: str = "json"
    """Default format of GET /v1/jobs/{id}/result."""
    model: str | None = None
    """The model the client asked for (the service has one; it is checked at submission)."""
    beam_size: int = 5
    diarize: bool = False
    """Find the speakers: segments and words carry ``speaker`` (malsori.speakers)."""
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    sentiment: bool = False
    """Each segment carries its sentiment (malsori.analysis)."""

    def __post_init__(self) -> None:
        # TranscribeOptions holds the rules for language, task, prompt and beam size; DiarizeOptions the speaker counts.
        checked = self.transcribe_options()
        if not isinstance(self.diarize, bool):
            raise InvalidOptionsError("diarize must be true or false")
        if not self.diarize and (self.num_speakers or self.min_speakers or self.max_speakers):
            raise InvalidOptionsError("num_speakers, min_speakers and max_speakers need diarize=true")
        self.diarize_options()
        object.__setattr__(self, "language", checked.language)
        object.__setattr__(self, "response_format", normalize_format(self.response_format))
        if not isinstance(self.word_timestamps, bool):
            raise InvalidOptionsError("word_timestamps must be true or false")
        if not isinstance(self.sentiment, bool):
            raise InvalidOptionsError("sentiment must be true or false")

    def transcribe_options(self) -> TranscribeOptions:
        return TranscribeOptions(
            language=self.language,
            task=self.task,
            initial_prompt=self.prompt or None,
            word_timestamps=self.word_timestamps,
            beam_size=self.beam_size,
        )

    def diarize_options(self) -> DiarizeOptions | None:
        """The speaker options, or None when the job does not look for speakers."""
        if not self.diarize:
            return None
        return DiarizeOptions(num_speakers=self.num_speakers, min_speakers=self.min_speakers, max_speakers=self.max_speakers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JobOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})
