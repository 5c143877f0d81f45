"""Jobs: long files transcribed in the background, every state persisted (transport-free)."""

from .options import JobIds, JobOptions
from .results import transcript_from_dict
from .service import MAX_ATTEMPTS, JobService, RecoveryReport
from .uploads import UploadStore

__all__ = [
    "JobService",
    "JobOptions",
    "JobIds",
    "RecoveryReport",
    "UploadStore",
    "MAX_ATTEMPTS",
    "transcript_from_dict",
]
