"""Speakers on real recordings: the diarization itself (DER against the reference RTTM), who said each
word, every output format, and the HTTP endpoints of a real ``malsori serve``.

``two_speakers_call`` (30 s telephone call, overlaps; reference RTTM) and ``three_speakers.wav`` (20 s,
three speakers in turn; ``.speakers.txt`` gives each one's words) from ``testdata/diarization``.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import httpx
import pytest

from malsori.engine.audio import decode_audio
from malsori.engine.options import TranscribeOptions
from malsori.engine.pipeline import Pipeline
from malsori.evaluation import normalize
from malsori.formats import render, speaker_summary
from malsori.jobs.results import transcript_from_dict
from malsori.speakers import Diarization, DiarizeOptions, Diarizer, attribute

pytestmark = pytest.mark.model

DIAR = "diarization"


@pytest.fixture(scope="module")
def diarizer() -> Diarizer:
    return Diarizer()


@pytest.fixture(scope="module")
def call_audio(testdata):
    return decode_audio(testdata / DIAR / "two_speakers_call.wav")


@pytest.fixture(scope="module")
def three_audio(testdata):
    return decode_audio(testdata / DIAR / "three_speakers.wav")


def read_rttm(path: Path) -> list[tuple[float, float, str]]:
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "SPEAKER":
            start, dur = float(parts[3]), float(parts[4])
            out.append((start, start + dur, parts[7]))
    return out


def der(reference: list[tuple[float, float, str]], turns, *, collar: float) -> float:
    """pyannote.metrics' diarization error rate; ``collar`` is the total width (0.5 = 0.25 s each side)."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for i, (s, e, who) in enumerate(reference):
        ref[Segment(s, e), i] = who
    for i, (s, e, who) in enumerate(turns):
        hyp[Segment(s, e), i] = who
    uem = Segment(0.0, max(e for _, e, _ in reference))
    return float(DiarizationErrorRate(collar=collar)(ref, hyp, uem=uem))


def test_scorer_counts_errors():
    """The scorer the targets rest on: a perfect hypothesis scores 0, swapped labels inside a turn count."""
    ref = [(0.0, 10.0, "a"), (10.0, 20.0, "b")]
    assert der(ref, [(0.0, 10.0, "X"), (10.0, 20.0, "Y")], collar=0.0) == 0.0
    assert der(ref, [(0.0, 20.0, "X")], collar=0.0) == pytest.approx(0.5)
    assert der(ref, [(0.0, 5.0, "X")], collar=0.0) == pytest.approx(0.75)


# -- the diarization --------------------------------------------------------------------------------
def test_two_speakers_call_found_without_the_count(diarizer, call_audio, testdata):
    result = diarizer.diarize(call_audio)
    assert result.speakers == ["SPEAKER_00", "SPEAKER_01"]
    reference = read_rttm(testdata / DIAR / "two_speakers_call.rttm")
    turns = [(t.start, t.end, t.speaker) for t in result.turns]
    assert der(reference, turns, collar=0.5) <= 0.08  # the target, 0.25 s collar each side
    assert der(reference, turns, collar=0.0) <= 0.20
    # Overlap: the reference has both talking at 18.2-18.6 s and 27.9-28.5 s; two turns overlap somewhere.
    overlaps = [
        (a, b) for a in result.turns for b in result.turns if a.speaker < b.speaker and a.start < b.end and b.start < a.end
    ]
    assert overlaps


def test_speaker_count_options_bound_the_clusters(diarizer, call_audio):
    assert len(diarizer.diarize(call_audio, DiarizeOptions(num_speakers=3)).speakers) == 3
    assert diarizer.diarize(call_audio, DiarizeOptions(max_speakers=1)).speakers == ["SPEAKER_00"]
    assert len(diarizer.diarize(call_audio, DiarizeOptions(min_speakers=2, max_speakers=4)).speakers) == 2


def test_bad_speaker_options_are_refused():
    from malsori.errors import InvalidOptionsError

    with pytest.raises(InvalidOptionsError, match="min_speakers"):
        DiarizeOptions(min_speakers=4, max_speakers=2)
    with pytest.raises(InvalidOptionsError, match="between 1 and 20"):
        DiarizeOptions(num_speakers=0)


def test_silence_and_tiny_inputs_have_no_speakers(diarizer):
    import numpy as np

    assert diarizer.diarize(np.zeros(8000, np.float32)).turns == ()  # under 0.5 s
    assert diarizer.diarize(np.zeros(16000 * 12, np.float32)).turns == ()


# -- every word to its speaker ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_transcript(transcriber, diarizer, three_audio):
    transcript = Pipeline(transcriber).transcribe(three_audio, TranscribeOptions(language="en", word_timestamps=True))
    return attribute(transcript, diarizer.diarize(three_audio))


def _reference_words(testdata) -> list[tuple[str, str]]:
    words = []
    for line in (testdata / DIAR / "three_speakers.speakers.txt").read_text().splitlines():
        who, text = line.split("\t", 1)
        words += [(w, who) for w in normalize(text).split()]
    return words


def test_three_speakers_every_word_to_its_speaker(three_transcript, testdata):
    assert {s.speaker for s in three_transcript.segments} == {"SPEAKER_00", "SPEAKER_01", "SPEAKER_02"}
    reference = _reference_words(testdata)
    hypothesis = [(w, word.speaker) for word in three_transcript.words for w in normalize(word.word).split()]
    matcher = difflib.SequenceMatcher(a=[w for w, _ in reference], b=[w for w, _ in hypothesis], autojunk=False)
    pairs = [(reference[i + k][1], hypothesis[j + k][1]) for i, j, n in matcher.get_matching_blocks() for k in range(n)]
    assert len(pairs) >= 0.9 * len(reference)  # the words themselves are recognised
    mapping = dict(pairs)
    assert len(set(mapping.values())) == 3, mapping
    wrong = [(ref, hyp) for ref, hyp in pairs if mapping[ref] != hyp]
    assert not wrong, wrong
    # Segments are split where the speaker changes: each holds one speaker's words only.
    for seg in three_transcript.segments:
        assert {w.speaker for w in seg.words or ()} == {seg.speaker}


# -- every output format ----------------------------------------------------------------------------
def test_formats_carry_the_speakers(three_transcript):
    import srt
    import webvtt

    t = three_transcript
    labels = [s.speaker for s in t.segments if s.text.strip()]

    cues = list(srt.parse(render(t, "srt")))
    assert [re.match(r"\[(SPEAKER_\d\d)\] ", c.content).group(1) for c in cues] == labels

    vtt = webvtt.from_buffer(__import__("io").StringIO(render(t, "vtt")))
    assert [c.voice for c in vtt.captions] == labels

    rttm = [line.split() for line in render(t, "rttm").splitlines()]
    assert rttm and all(len(p) == 10 and p[0] == "SPEAKER" and p[7].startswith("SPEAKER_") for p in rttm)
    assert {p[7] for p in rttm} == set(labels)
    assert [p[7] for p in rttm] == [who for _, _, who in sorted(t.speaker_turns)]
    got = [(float(p[3]), float(p[3]) + float(p[4])) for p in rttm]
    assert [v for pair in got for v in pair] == pytest.approx(
        [v for a, b, _ in sorted(t.speaker_turns) for v in (a, b)], abs=0.002
    )

    verbose = json.loads(render(t, "verbose_json"))
    assert [s["speaker"] for s in verbose["segments"]] == [s.speaker for s in t.segments]
    assert all(w["speaker"].startswith("SPEAKER_") for w in verbose["words"])
    assert verbose["speakers"] == speaker_summary(t)

    diarized = json.loads(render(t, "diarized_json"))
    assert set(diarized) == {"task", "duration", "text", "segments"}
    assert [s["speaker"] for s in diarized["segments"]] == labels
    assert all(s["type"] == "transcript.text.segment" for s in diarized["segments"])

    summary = speaker_summary(t)
    assert set(summary) == set(labels)
    for label, entry in summary.items():
        assert set(entry) == {"total_duration", "segments_count", "text_parts"}
        assert entry["segments_count"] == labels.count(label) == len(entry["text_parts"])
        assert entry["total_duration"] > 0

    # A stored job result renders the same speakers after the round trip through the database's JSON.
    again = transcript_from_dict(json.loads(json.dumps(t.to_dict())))
    for fmt in ("srt", "vtt", "rttm", "verbose_json", "diarized_json"):
        assert render(again, fmt) == render(t, fmt), fmt


def test_undiarized_transcripts_keep_their_shapes(transcriber, testdata):
    t = Pipeline(transcriber).transcribe(decode_audio(testdata / "en/jfk.flac"))
    assert "speaker" not in render(t, "verbose_json") and "<v " not in render(t, "vtt") and "[SPEAKER" not in render(t, "srt")
    assert render(t, "rttm") == "" and speaker_summary(t) == {} and "speakers" not in t.to_dict()


def test_a_word_in_a_gap_takes_the_nearest_speaker():
    from malsori.speakers import Turn

    d = Diarization((Turn(0.0, 1.0, "SPEAKER_00"), Turn(3.0, 4.0, "SPEAKER_01")), 4.0)
    assert d.speaker_at(1.2, 1.4) == "SPEAKER_00" and d.speaker_at(2.6, 2.8) == "SPEAKER_01"
    assert d.speaker_at(0.5, 3.2) == "SPEAKER_00"  # talks most in it


# -- HTTP ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server.url, timeout=180.0) as client:
        yield client


live_server_env = {"MALSORI__SERVER__MEDIA_DIR": str(Path(__file__).resolve().parents[2] / "shared" / "testdata")}


def _three(testdata):
    return {"file": ("three_speakers.wav", (testdata / DIAR / "three_speakers.wav").read_bytes(), "audio/wav")}


@pytest.mark.e2e
def test_online_speakers_match_the_voices_of_a_piece_jointly():
    """Early in a call one speaker is known from a second of speech. A piece then holds a new voice
    with more speech that is still close-ish to that speaker, and the speaker's own voice, closer:
    matched one by one (most speech first), the new voice took the known speaker; jointly, each voice
    gets its own (a replay of one live run: 81% of words right one by one, 89% jointly)."""
    import numpy as np

    from malsori.speakers.online import OnlineSpeakers

    def unit(*v):
        v = np.array([*v, 0.0, 0.0][:4], dtype=np.float32)
        return v / np.linalg.norm(v)

    a, b = unit(1, 0), unit(0.6, 0.8)  # cosine distance 0.4 (under the 0.45 threshold)
    online = OnlineSpeakers(None, threshold=0.45)  # type: ignore[arg-type]  # no models needed to match
    assert online._assign([(1.2, 0, a)]) == {0: 0} and online.count == 1
    assert online._assign([(3.0, 1, b), (1.5, 2, unit(0.98, 0.05))]) == {1: 1, 2: 0} and online.count == 2
    # A voice close to no one but short stays unknown; long enough, it is a new speaker.
    assert online._assign([(0.5, 0, unit(0, 0, 1))]) == {0: None} and online.count == 2
    assert online._assign([(2.0, 0, unit(0, 0, 1))]) == {0: 2} and online.count == 3


def test_stt_upload_with_speakers(http, testdata):
    response = http.post("/stt/upload", files=_three(testdata), data={"diarize": "true", "meeting_id": "m1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["has_diarization"] is True and body["total_speakers"] == 3
    assert set(body["speakers"]) == {"SPEAKER_00", "SPEAKER_01", "SPEAKER_02"}
    for label, entry in body["speakers"].items():
        assert set(entry) == {"total_duration", "segments_count", "text_parts"}
        mine = [s for s in body["segments"] if s["speaker"] == label]
        assert entry["segments_count"] == len(mine) and entry["text_parts"] == [s["text"] for s in mine]
    first = body["speakers"][body["segments"][0]["speaker"]]
    assert "begins" in " ".join(first["text_parts"]).lower()


@pytest.mark.e2e
def test_stt_process_with_a_speaker_count(http):
    response = http.post("/stt/process", json={"audio_url": f"{DIAR}/two_speakers_call.wav", "diarize": True, "num_speakers": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total_speakers"] == 2 and body["has_diarization"] is True
    assert all(s["speaker"] in body["speakers"] for s in body["segments"])


@pytest.mark.e2e
def test_openai_verbose_and_diarized_json(http, testdata):
    response = http.post(
        "/v1/audio/transcriptions",
        files=_three(testdata),
        data={"response_format": "verbose_json", "diarize": "true", "timestamp_granularities[]": "word"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert {s["speaker"] for s in body["segments"]} == {"SPEAKER_00", "SPEAKER_01", "SPEAKER_02"}
    assert body["words"] and all("speaker" in w for w in body["words"])

    response = http.post("/v1/audio/transcriptions", files=_three(testdata), data={"response_format": "diarized_json"})
    assert response.status_code == 200, response.text
    assert len({s["speaker"] for s in response.json()["segments"]}) == 3

    response = http.post("/v1/audio/transcriptions", files=_three(testdata), data={"response_format": "vtt", "diarize": "true"})
    assert response.status_code == 200 and "<v SPEAKER_02>" in response.text


@pytest.mark.e2e
def test_speaker_options_errors(http, testdata):
    for data in ({"num_speakers": "2"}, {"diarize": "true", "min_speakers": "3", "max_speakers": "2"}):
        response = http.post("/v1/audio/transcriptions", files=_three(testdata), data=data)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_options"
    response = http.post("/stt/upload", files=_three(testdata), data={"diarize": "true", "num_speakers": "0"})
    assert response.status_code == 422
    response = http.post("/v1/audio/transcriptions", files=_three(testdata), data={"diarize": "true", "stream": "true"})
    assert response.status_code == 422
    assert http.get("/health").status_code == 200


# -- the CLI and jobs -------------------------------------------------------------------------------
def test_cli_transcribe_diarize(monkeypatch, transcriber, testdata):
    from typer.testing import CliRunner

    import malsori.engine
    from malsori.cli.app import app

    monkeypatch.setattr(malsori.engine, "Transcriber", lambda config: transcriber)  # the session's model
    wav = testdata / DIAR / "three_speakers.wav"
    result = CliRunner().invoke(app, ["transcribe", "--diarize", "--language", "en", "--format", "rttm", str(wav)])
    assert result.exit_code == 0, result.output
    assert {line.split()[7] for line in result.stdout.splitlines()} == {"SPEAKER_00", "SPEAKER_01", "SPEAKER_02"}
    result = CliRunner().invoke(app, ["transcribe", "--diarize", "--num-speakers", "2", "-f", "vtt", str(wav)])
    assert result.exit_code == 0, result.output
    assert set(re.findall(r"<v (SPEAKER_\d\d)>", result.stdout)) == {"SPEAKER_00", "SPEAKER_01"}
    result = CliRunner().invoke(app, ["transcribe", "--num-speakers", "2", str(wav)])
    assert result.exit_code == 2 and "need" in result.output and "--diarize" in result.output


@pytest.mark.e2e
def test_job_with_speakers(http, testdata):
    import time

    response = http.post(
        "/v1/jobs", files=_three(testdata), data={"diarize": "true", "response_format": "rttm", "meeting_id": "spk"}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 240
    while (job := http.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "succeeded", job
    assert job["options"]["diarize"] is True
    assert job["result"]["speakers"] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    rttm = http.get(f"/v1/jobs/{job_id}/result").text
    assert {line.split()[7] for line in rttm.splitlines()} == {"SPEAKER_00", "SPEAKER_01", "SPEAKER_02"}
    srt_text = http.get(f"/v1/jobs/{job_id}/result", params={"format": "srt"}).text
    assert "[SPEAKER_02]" in srt_text
    response = http.post("/v1/jobs", json={"audio_url": f"{DIAR}/three_speakers.wav", "max_speakers": 2})
    assert response.status_code == 422 and "diarize" in response.json()["error"]["message"]


# -- live ---------------------------------------------------------------------------------------------
def _reference_speaker_at(reference: list[tuple[float, float, str]], start: float, end: float) -> str | None:
    talk: dict[str, float] = {}
    for s, e, who in reference:
        overlap = min(end, e) - max(start, s)
        if overlap > 0:
            talk[who] = talk.get(who, 0.0) + overlap
    return max(talk, key=lambda w: talk[w]) if talk else None


@pytest.mark.e2e
def test_live_stream_labels_finals_with_speakers(live_server, call_audio, testdata):
    """two_speakers_call streamed at twice real time over /v1/stream with diarize: true."""
    import asyncio

    import numpy as np

    from malsori.client import AsyncStreamClient, FinalEvent, StreamOptions

    async def run() -> list[FinalEvent]:
        options = StreamOptions(encoding="pcm_f32le", language="en", word_timestamps=True, options={"diarize": True})
        url = live_server.url.replace("http", "ws") + "/v1/stream"

        async def chunks():
            step = 1600  # 100 ms
            for i in range(0, len(call_audio), step):
                yield np.ascontiguousarray(call_audio[i : i + step]).tobytes()
                await asyncio.sleep(0.05)

        async with AsyncStreamClient(url, options) as stream:
            return [e async for e in stream.stream(chunks()) if isinstance(e, FinalEvent)]

    finals = asyncio.run(run())
    assert finals and all(f.extra.get("diarized") is True and "speaker" in f.extra for f in finals)
    reference = read_rttm(testdata / DIAR / "two_speakers_call.rttm")
    pairs = [(_reference_speaker_at(reference, w.start, w.end), w.speaker) for f in finals for w in f.words]
    pairs = [(ref, hyp) for ref, hyp in pairs if ref is not None]
    labels = {hyp for _, hyp in pairs if hyp}
    assert len(labels) == 2, [(f.start, f.end, f.extra["speaker"], f.text) for f in finals]
    best = 0
    for order in ([0, 1], [1, 0]):  # the mapping of labels to reference speakers that fits best
        mapping = dict(zip(sorted(labels), [sorted({r for r, _ in pairs})[i] for i in order], strict=True))
        best = max(best, sum(mapping.get(hyp) == ref for ref, hyp in pairs))
    assert best >= 0.8 * len(pairs), (best, len(pairs))
