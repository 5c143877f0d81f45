"""Output writers: every format, read back with a real parser where one exists (srt, webvtt-py)."""

from __future__ import annotations

import csv
import html
import io
import json

import pytest
import srt
import webvtt

from malsori.engine.types import Segment, Transcript, Word
from malsori.errors import InvalidOptionsError
from malsori.formats import CONTENT_TYPES, EXTENSIONS, FORMATS, format_timestamp, normalize_format, render


def _segment(i, start, end, text, words=None):
    return Segment(
        id=i,
        start=start,
        end=end,
        text=text,
        avg_logprob=-0.25,
        no_speech_prob=0.01,
        compression_ratio=1.3,
        temperature=0.0,
        words=words,
        tokens=(50364, 400 + i, 50400),
    )


@pytest.fixture
def transcript() -> Transcript:
    words = (Word(0.0, 0.4, " And", 0.9), Word(0.4, 0.9, " so,", 0.8))
    return Transcript(
        segments=(
            _segment(0, 0.0, 1.234, " And so, my fellow Americans,", words),
            _segment(1, 1.234, 62.5, "ask not what\nyour country can do for you", ()),
            _segment(2, 3599.9996, 90061.23, "Tom & Jerry <3 --> fin"),
        ),
        language="en",
        language_probability=0.98,
        duration=90062.0,
        task="transcribe",
    )


EXPECTED = [  # (start ms, end ms, text) as every timed format must carry it
    (0, 1234, "And so, my fellow Americans,"),
    (1234, 62500, "ask not what your country can do for you"),
    (3600000, 90061230, "Tom & Jerry <3 -> fin"),
]


def test_formats_table_is_complete():
    assert FORMATS == ("txt", "json", "verbose_json", "diarized_json", "srt", "vtt", "tsv", "rttm")
    assert set(CONTENT_TYPES) == set(FORMATS) == set(EXTENSIONS)
    assert CONTENT_TYPES["vtt"].startswith("text/vtt")
    assert CONTENT_TYPES["verbose_json"] == "application/json"


@pytest.mark.parametrize(
    ("seconds", "marker", "expected"),
    [
        (0, ",", "00:00:00,000"),
        (1.23, ",", "00:00:01,230"),
        (1.2345, ".", "00:00:01.234"),
        (59.9996, ".", "00:01:00.000"),  # rounding carries into the minute
        (3661.5, ".", "01:01:01.500"),
        (90061.23, ",", "25:01:01,230"),  # hours keep counting past a day
        (-0.5, ".", "00:00:00.000"),
    ],
)
def test_format_timestamp(seconds, marker, expected):
    assert format_timestamp(seconds, marker) == expected


def test_txt_is_the_text_on_one_line(transcript):
    out = render(transcript, "txt")
    assert out == "And so, my fellow Americans, ask not what your country can do for you Tom & Jerry <3 --> fin\n"
    assert render(transcript, "text") == out  # OpenAI's response_format name


def test_json_is_openai_shape(transcript):
    data = json.loads(render(transcript, "json"))
    assert data == {"text": json.loads(render(transcript, "verbose_json"))["text"]}
    assert data["text"].startswith("And so, my fellow Americans, ask not")


def test_verbose_json_is_openai_shape(transcript):
    data = json.loads(render(transcript, "verbose_json"))
    assert data["task"] == "transcribe" and data["language"] == "en" and data["duration"] == 90062.0
    assert [s["id"] for s in data["segments"]] == [0, 1, 2]
    first = data["segments"][0]
    assert set(first) == {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert (first["start"], first["end"], first["tokens"]) == (0.0, 1.234, [50364, 400, 50400])
    assert first["avg_logprob"] == -0.25 and first["no_speech_prob"] == 0.01
    assert data["segments"][1]["seek"] == 123
    assert [(w["word"], w["start"], w["end"]) for w in data["words"]] == [("And", 0.0, 0.4), ("so,", 0.4, 0.9)]


def test_verbose_json_has_no_words_without_word_timestamps():
    plain = Transcript((_segment(0, 0.0, 1.0, "hello"),), "en", 1.0, 1.0)
    assert "words" not in json.loads(render(plain, "verbose_json"))


def test_srt_parses_back(transcript):
    out = render(transcript, "srt")
    assert "00:00:01,234 --> 00:01:02,500" in out
    cues = list(srt.parse(out))
    assert [c.index for c in cues] == [1, 2, 3]
    got = [(c.start.total_seconds() * 1000, c.end.total_seconds() * 1000, c.content) for c in cues]
    assert [(round(s), round(e), t) for s, e, t in got] == EXPECTED


def _ms(ts) -> int:
    return ((ts.hours * 60 + ts.minutes) * 60 + ts.seconds) * 1000 + ts.milliseconds


def test_vtt_parses_back(transcript):
    out = render(transcript, "vtt")
    assert out.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(out)).captions
    got = [(_ms(c.start_time), _ms(c.end_time), html.unescape(c.text)) for c in captions]
    assert got == EXPECTED
    assert "Tom &amp; Jerry &lt;3" in out  # markup characters escaped as WebVTT requires


def test_tsv_parses_back(transcript):
    out = render(transcript, "tsv")
    rows = list(csv.reader(io.StringIO(out), delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows[0] == ["start", "end", "text"]
    # TSV is not a cue format, so "-->" stays as spoken; newlines and tabs never split a row.
    expected = [*EXPECTED[:2], (3600000, 90061230, "Tom & Jerry <3 --> fin")]
    assert [(int(s), int(e), t) for s, e, t in rows[1:]] == expected


def test_empty_transcript_in_every_format():
    empty = Transcript((), "en", 0.0, 8.0)
    assert render(empty, "txt") == ""
    assert json.loads(render(empty, "json")) == {"text": ""}
    assert json.loads(render(empty, "verbose_json"))["segments"] == []
    assert list(srt.parse(render(empty, "srt"))) == []
    assert webvtt.from_buffer(io.StringIO(render(empty, "vtt"))).captions == []
    assert render(empty, "tsv") == "start\tend\ttext\n"


def test_blank_segments_are_not_cues():
    t = Transcript((_segment(0, 0.0, 1.0, "  "), _segment(1, 1.0, 0.5, "late")), "en", 1.0, 2.0)
    cues = list(srt.parse(render(t, "srt")))
    assert [(c.content, c.start.total_seconds(), c.end.total_seconds()) for c in cues] == [("late", 1.0, 1.0)]


def test_unknown_format():
    with pytest.raises(InvalidOptionsError, match=r"unknown output format 'docx'.*txt, json"):
        render(Transcript((), "en", 0.0, 0.0), "docx")
    assert normalize_format(" SRT ") == "srt"
