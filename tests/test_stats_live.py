"""Statistics and meetings end to end: a real ``malsori serve`` process, the real model, the LJ talk
streamed over ``/v1/stream`` with ``stats`` and a ``meeting_id``; then the server restarts and the
meeting is still there."""

from __future__ import annotations

import asyncio
import json
from itertools import pairwise

import httpx
import pytest
from test_streaming_ws import LJ, SR, load, pcm16, ws_url

pytestmark = [pytest.mark.e2e, pytest.mark.model]

MEETING = "lj-talk-stats"


async def _stream(url: str, audio, *, speed: float = 2.0, frame_s: float = 0.1) -> tuple[list[tuple[float, dict]], int | None]:
    """Send ``audio`` at ``speed`` x real time with stats on; every message with its arrival time."""
    import websockets

    got: list[tuple[float, dict]] = []
    start = {
        "type": "start", "sample_rate": SR, "encoding": "pcm_s16le", "language": "en",
        "stats": True, "meeting_id": MEETING, "sentiment": True,
    }  # fmt: skip
    loop = asyncio.get_running_loop()
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps(start))
        assert json.loads(await ws.recv())["type"] == "ready"

        async def receive() -> None:
            async for raw in ws:
                got.append((loop.time(), json.loads(raw)))

        receiver = asyncio.create_task(receive())
        n, t0 = int(frame_s * SR), loop.time()
        for i in range(0, len(audio), n):
            await ws.send(pcm16(audio[i : i + n]))
            delay = (i + n) / SR / speed - (loop.time() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
        got.append((loop.time(), {"type": "_stop_sent"}))
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(receiver, 120)
        return got, ws.close_code


def test_lj_talk_stats_every_2_s_consistent_with_finals_and_the_meeting_survives_a_restart(live_server, testdata):
    audio = load(testdata, *LJ)
    got, code = asyncio.run(_stream(ws_url(live_server, "/v1/stream"), audio))
    assert code == 1000
    events = [e for _, e in got if e["type"] != "_stop_sent"]
    assert events[-1]["type"] == "end"
    stop_at = next(t for t, e in got if e["type"] == "_stop_sent")
    stats_times = [t for t, e in got if e["type"] == "stats" and t <= stop_at]
    # While the session streams: a stats event at least every 2 s (sent every 1 s and after each final).
    assert len(stats_times) >= (stop_at - got[0][0]) / 2
    gaps = [b - a for a, b in pairwise(stats_times)]
    assert max(gaps) <= 2.0, gaps

    finals = [e for e in events if e["type"] == "final"]
    last = [e for e in events if e["type"] == "stats"][-1]["stats"]
    words = sum(len(f["text"].split()) for f in finals)
    speaking = sum(f["end"] - f["start"] for f in finals)
    assert last["finals"] == len(finals) >= 4
    assert last["words"] == words
    assert last["speaking_s"] == pytest.approx(speaking, abs=0.01)
    assert last["wpm"] == pytest.approx(words / speaking * 60, abs=0.1)
    assert 100 <= last["wpm"] <= 250  # a reader's pace (LJ Speech: about 160 words a minute)
    assert last["audio_s"] == pytest.approx(events[-1]["audio_seconds"], abs=0.01)
    assert 0.0 < last["silence_ratio"] < 0.5  # four read sentences with 0.6 s between them
    assert last["latency"]["count"] == len(finals) and 0 < last["latency"]["p50_ms"] <= last["latency"]["p95_ms"]
    # Finals carry their sentiment, and the statistics count it.
    labels = [f["sentiment"]["label"] for f in finals]
    assert set(labels) <= {"negative", "neutral", "positive"}
    assert last["sentiment"]["counts"] == {k: labels.count(k) for k in ("negative", "neutral", "positive")}
    assert len(last["sentiment"]["trend"]) == len(finals)

    url = f"{live_server.url}/v1/meetings/{MEETING}"
    before = httpx.get(url).json()
    assert before["state"] == "ended" and [t["text"] for t in before["transcript"]] == [f["text"] for f in finals]
    assert before["stats"]["words"] == words

    live_server.restart()
    after = httpx.get(url)
    assert after.status_code == 200
    assert after.json() == before
    assert MEETING in [m["meeting_id"] for m in httpx.get(f"{live_server.url}/v1/meetings").json()["meetings"]]


# -- finals at sentence ends (segmentation: "sentence") ---------------------------------------------
KO = [f"ko/zeroth_104_003_{k}.flac" for k in ("0019", "0193", "0294")]


def _sentence_finals(live_server, audio, language: str) -> list[dict]:
    from test_streaming_ws import stream

    start = {"language": language, "segmentation": "sentence"}
    ready, events, _, code = asyncio.run(stream(ws_url(live_server, "/v1/stream"), audio, start=start))
    assert code == 1000 and ready["config"]["segmentation"] == "sentence"
    return [e for e in events if e["type"] == "final"]


def _check_cut_at_sentence_ends(finals: list[dict]) -> None:
    """A sentence end is always the end of a final, never inside one."""
    from malsori.streaming.sentences import sentence_end

    for f in finals:
        words = f["text"].split()
        assert not any(sentence_end(w) for w in words[:-1]), f["text"]


def test_lj_talk_sentence_finals(live_server, testdata, manifest):
    from test_streaming_ws import reference

    from malsori.evaluation import wer

    finals = _sentence_finals(live_server, load(testdata, *LJ), "en")
    _check_cut_at_sentence_ends(finals)
    texts = [f["text"] for f in finals]
    # The first clip is read with pauses at its commas ("Printing, in the only sense ..., differs
    # ... in the Exhibition"): one final, not one per pause.
    assert texts[0].lower().startswith("printing") and "exhibition" in texts[0].lower(), texts
    # "... comparatively modern." ends a sentence; the talk's last words ("... printed book,", or
    # "book." as Whisper hears it in some windows) go out when the stream stops even without an end.
    assert any(t.endswith("modern.") for t in texts) and texts[-1].rstrip(",.").endswith("printed book"), texts
    assert wer(reference(manifest, *LJ), " ".join(f["text"] for f in finals)) <= 0.10


def test_korean_sentence_finals(live_server, testdata):
    from malsori.evaluation import wer
    from malsori.streaming.sentences import sentence_end

    finals = _sentence_finals(live_server, load(testdata, *KO), "ko")
    _check_cut_at_sentence_ends(finals)
    texts = [f["text"] for f in finals]
    assert sum(1 for t in texts if sentence_end(t.split()[-1])) >= 2, texts
    rows = {line.split("\t")[0]: line.rstrip("\n").split("\t")[4] for line in (testdata / "ko" / "manifest.tsv").open()}
    error = wer(" ".join(rows[k] for k in KO), " ".join(texts), language="ko")  # CER, spaces removed
    assert error <= 0.35, (error, texts)
