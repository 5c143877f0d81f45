"""Transcript writers: txt, json, verbose_json, diarized_json, srt, vtt, tsv, rttm.

One entry point, :func:`render`, shared by the CLI, the HTTP API (with :data:`CONTENT_TYPES`) and the
web page's downloads, so a transcript reads the same wherever it comes from. The shapes follow what
people already parse: ``json`` and ``verbose_json`` are OpenAI's transcription responses, ``tsv`` is
openai-whisper's (integer milliseconds), ``srt`` and ``vtt`` are plain SubRip and WebVTT cues, one per
segment.

A diarized transcript (``transcript.diarized``) carries a speaker on every segment and word: ``verbose_json``
segments and words gain ``speaker`` and the response a ``speakers`` summary; ``diarized_json`` is
OpenAI's diarized transcription response (``transcript.text.segment`` items with ``speaker``); SRT cues
start with ``[SPEAKER_00]``, WebVTT cues use a voice span (``<v SPEAKER_00>``); ``rttm`` is NIST's Rich
Transcription Time Marked format, one ``SPEAKER`` line per speaker turn.

This module needs nothing but the standard library: it reads a transcript's attributes (see
:class:`malsori.engine.Transcript`) and never imports the engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import InvalidOptionsError

if TYPE_CHECKING:
    from .engine.types import Segment, Transcript

__all__ = [
    "FORMATS",
    "CONTENT_TYPES",
    "EXTENSIONS",
    "InvalidOptionsError",
    "normalize_format",
    "render",
    "format_timestamp",
    "speaker_summary",
]

FORMATS: tuple[str, ...] = ("txt", "json", "verbose_json", "diarized_json", "srt", "vtt", "tsv", "rttm")
"""Every output format :func:`render` writes."""

# OpenAI's `response_format=text` is our `txt`.
_ALIASES = {"text": "txt"}

CONTENT_TYPES: dict[str, str] = {
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
    "verbose_json": "application/json",
    "diarized_json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "rttm": "text/plain; charset=utf-8",
}
"""HTTP ``Content-Type`` of each format."""

EXTENSIONS: dict[str, str] = {
    "txt": "txt",
    "json": "json",
    "verbose_json": "json",
    "diarized_json": "json",
    "srt": "srt",
    "vtt": "vtt",
    "tsv": "tsv",
    "rttm": "rttm",
}
"""File name extension (without the dot) of each format."""


def normalize_format(fmt: str) -> str:
    """The canonical name of ``fmt`` (case-insensitive; ``text`` is ``txt``), or InvalidOptionsError."""
    name = (fmt or "").strip().lower()
    name = _ALIASES.get(name, name)
    if name not in FORMATS:
        raise InvalidOptionsError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    return name


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """``HH:MM:SS.mmm`` (``,`` for SRT). Hours keep counting past 24; negative times clamp to 0."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _one_line(text: str) -> str:
    """Segment text on one line: a newline in a cue or a TSV row would break the format."""
    return " ".join(text.split())


def _cue_text(text: str) -> str:
    # "-->" inside a cue would read as a timing line to SRT and WebVTT parsers.
    return _one_line(text).replace("-->", "->")


def _timed_segments(transcript: Transcript) -> list[tuple[float, float, str]]:
    """(start, end, text) of every segment with text, end never before start."""
    return [(start, end, text) for start, end, text, _ in _speaker_segments(transcript)]


def _speaker_segments(transcript: Transcript) -> list[tuple[float, float, str, str | None]]:
    """(start, end, text, speaker) of every segment with text, end never before start."""
    out = []
    for seg in transcript.segments:
        text = _one_line(seg.text)
        if text:
            start = max(0.0, float(seg.start))
            out.append((start, max(start, float(seg.end)), text, getattr(seg, "speaker", None)))
    return out


def speaker_summary(transcript: Transcript) -> dict[str, dict]:
    """The original design's ``speakers`` object: per label, ``total_duration`` (seconds of its segments),
    ``segments_count`` and ``text_parts`` (its segments' texts, in order). Empty when not diarized."""
    out: dict[str, dict] = {}
    for start, end, text, speaker in _speaker_segments(transcript):
        if speaker is None:
            continue
        entry = out.setdefault(speaker, {"total_duration": 0.0, "segments_count": 0, "text_parts": []})
        entry["total_duration"] = round(entry["total_duration"] + end - start, 3)
        entry["segments_count"] += 1
        entry["text_parts"].append(text)
    return dict(sorted(out.items()))


def _txt(transcript: Transcript) -> str:
    text = _one_line(transcript.text)
    return text + "\n" if text else ""


def _json(transcript: Transcript) -> str:
    return json.dumps({"text": _one_line(transcript.text)}, ensure_ascii=False) + "\n"


def _segment_json(seg: Segment) -> dict:
    data = {
        "id": seg.id,
        # Whisper's `seek` is the mel frame (10 ms) its 30 s window started at; malsori's windows
        # follow the speech instead, so this is the frame the segment itself starts at.
        "seek": round(seg.start * 100),
        "start": round(seg.start, 3),
        "end": round(seg.end, 3),
        "text": seg.text,
        "tokens": list(seg.tokens),
        "temperature": seg.temperature,
        "avg_logprob": round(seg.avg_logprob, 6),
        "compression_ratio": round(seg.compression_ratio, 6),
        "no_speech_prob": round(seg.no_speech_prob, 6),
    }
    if seg.speaker is not None:
        data["speaker"] = seg.speaker
    if seg.sentiment is not None:
        data["sentiment"] = seg.sentiment.to_dict()
    return data


def _verbose_json(transcript: Transcript) -> str:
    data: dict = {
        "task": transcript.task,
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "text": _one_line(transcript.text),
        "segments": [_segment_json(seg) for seg in transcript.segments],
    }
    if any(seg.words is not None for seg in transcript.segments):
        data["words"] = [
            {
                "word": w.word.strip(),
                "start": round(w.start, 3),
                "end": round(w.end, 3),
                "probability": round(w.probability, 4),
                **({"speaker": w.speaker} if w.speaker is not None else {}),
            }
            for seg in transcript.segments
            for w in (seg.words or ())
        ]
    if transcript.diarized:
        data["speakers"] = speaker_summary(transcript)
    return json.dumps(data, ensure_ascii=False) + "\n"


def _diarized_json(transcript: Transcript) -> str:
    """OpenAI's ``diarized_json``: the text and one ``transcript.text.segment`` per segment, with its speaker."""
    segments = [
        {
            "type": "transcript.text.segment",
            "id": f"seg_{n:03d}",
            "start": round(start, 3),
            "end": round(end, 3),
            "text": text,
            "speaker": speaker,
        }
        for n, (start, end, text, speaker) in enumerate(_speaker_segments(transcript))
    ]
    data = {
        "task": transcript.task,
        "duration": round(transcript.duration, 3),
        "text": _one_line(transcript.text),
        "segments": segments,
    }
    return json.dumps(data, ensure_ascii=False) + "\n"


def _rttm(transcript: Transcript) -> str:
    """``SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`` per speaker turn (per segment
    when the transcript has no turns); the file id is ``audio``. Empty when not diarized."""
    turns = list(transcript.speaker_turns) or [(s, e, who) for s, e, _, who in _speaker_segments(transcript) if who]
    return "".join(
        f"SPEAKER audio 1 {start:.3f} {max(0.0, end - start):.3f} <NA> <NA> {who} <NA> <NA>\n"
        for start, end, who in sorted(turns)
    )


def _srt(transcript: Transcript) -> str:
    cues = [
        f"{n}\n{format_timestamp(start, ',')} --> {format_timestamp(end, ',')}\n{f'[{who}] ' if who else ''}{_cue_text(text)}\n"
        for n, (start, end, text, who) in enumerate(_speaker_segments(transcript), start=1)
    ]
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: a bare & or < starts an entity or a tag.
    return _cue_text(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt(transcript: Transcript) -> str:
    cues = [
        f"{format_timestamp(start)} --> {format_timestamp(end)}\n{f'<v {who}>' if who else ''}{_vtt_escape(text)}\n"
        for start, end, text, who in _speaker_segments(transcript)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def _tsv(transcript: Transcript) -> str:
    rows = ["start\tend\ttext"]
    for start, end, text in _timed_segments(transcript):
        rows.append(f"{round(start * 1000)}\t{round(end * 1000)}\t{text}")  # text has no tab: _one_line
    return "\n".join(rows) + "\n"


_WRITERS: dict[str, Callable[[Transcript], str]] = {
    "txt": _txt,
    "json": _json,
    "verbose_json": _verbose_json,
    "diarized_json": _diarized_json,
    "srt": _srt,
    "vtt": _vtt,
    "tsv": _tsv,
    "rttm": _rttm,
}


def render(transcript: Transcript, fmt: str) -> str:
    """``transcript`` written in format ``fmt`` (one of :data:`FORMATS`, or ``text`` for ``txt``).

    Raises :class:`InvalidOptionsError` for an unknown format.
    """
    return _WRITERS[normalize_format(fmt)](transcript)
