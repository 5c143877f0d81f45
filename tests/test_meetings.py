"""Meetings kept across sessions and processes (``malsori.analysis.meetings`` over
``malsori.storage.meetings``), on SQLite and on PostgreSQL: the record, speaker labels of a second
session, statistics rebuilt from the stored transcript, the listing. The HTTP side and a real server
restart are in tests/test_stats_fast.py and tests/test_stats_live.py."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from test_jobs_postgres import pg_database  # noqa: F401  (the module's PostgreSQL database)

from malsori.analysis.meetings import MeetingBook
from malsori.analysis.sentiment import Sentiment
from malsori.storage import open_engine
from malsori.storage.meetings import MeetingRepository
from malsori.streaming.events import Final


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meetings.db'}"
    return request.getfixturevalue("pg_database")


def _book(url: str, clock: Clock) -> MeetingBook:
    return MeetingBook(MeetingRepository(open_engine(url)), clock=clock)


def _close(book: MeetingBook) -> None:
    book.close()
    assert isinstance(book.store, MeetingRepository)
    book.store.close()


def _final(seq, text, start, end, speaker=None, sentiment=None) -> Final:
    told = None if sentiment is None else Sentiment(*sentiment)
    return Final(
        seq, text, start, end, "en", speaker=speaker, diarized=speaker is not None, sentiment=told, analyzed=told is not None
    )


def test_a_meeting_outlives_its_book_and_is_taken_up_again(db_url):
    meeting_id = f"m-{db_url[:6]}-{datetime.now().timestamp()}"
    clock = Clock()
    book = _book(db_url, clock)
    meeting = book.join(meeting_id, "s-1", tenant_id="acme")
    meeting.add_final("s-1", _final(1, "hello there everyone", 0.5, 2.0, "SPEAKER_00", ("positive", 0.8)), 0.9)
    meeting.add_final("s-1", _final(2, "this is bad", 3.0, 4.0, "SPEAKER_01", ("negative", 0.6)), 1.1)
    book.leave(meeting, "s-1", "stopped", audio_s=5.0)
    _close(book)

    # Another process (a restarted server): the record is read back as it was written.
    book = _book(db_url, clock)
    try:
        stored = book.store.get(meeting_id, "acme")  # type: ignore[union-attr]
        assert stored is not None and stored["state"] == "ended" and stored["tenant_id"] == "acme"
        assert [t["text"] for t in stored["transcript"]] == ["hello there everyone", "this is bad"]
        assert stored["stats"]["words"] == 6 and stored["stats"]["speaking_s"] == 2.5
        assert stored["stats"]["silence_ratio"] == 0.5  # (5 - 2.5) / 5
        assert [s["speaker"] for s in stored["speakers"]] == ["SPEAKER_00", "SPEAKER_01"]
        assert [t["sentiment"] for t in stored["transcript"]] == [
            {"label": "positive", "score": 0.8}, {"label": "negative", "score": 0.6},
        ]  # fmt: skip
        assert stored["stats"]["sentiment"]["mean"] == 0.1  # (0.8 - 0.6) / 2
        assert [(s["session_id"], s["end_reason"], s["audio_s"]) for s in stored["sessions"]] == [("s-1", "stopped", 5.0)]

        # Ids belong to tenants: another tenant naming the same id gets a meeting of its own, and
        # learns nothing of acme's (no refusal, no transcript).
        other = book.join(meeting_id, "s-x", tenant_id="globex")
        assert other.tenant_id == "globex" and other.transcript == [] and other.record()["stats"]["words"] == 0
        book.leave(other, "s-x", "stopped", audio_s=1.0)
        book.written().result(5)
        assert book.store.get(meeting_id, "globex")["sessions"][0]["session_id"] == "s-x"  # type: ignore[union-attr,index]
        assert book.store.get(meeting_id, "acme")["transcript"][0]["text"] == "hello there everyone"  # type: ignore[union-attr,index]

        # A second session joins the ended meeting: statistics go on from the stored transcript.
        meeting = book.join(meeting_id, "s-2", tenant_id="acme")
        assert meeting.state == "live"
        meeting.add_final("s-2", _final(1, "one two three four", 0.0, 2.0, "SPEAKER_00"), None)
        book.leave(meeting, "s-2", "stopped", audio_s=3.0)
        record = meeting.record()
        assert record["stats"]["words"] == 10 and record["stats"]["audio_s"] == 8.0
        assert [t["speaker"] for t in record["transcript"]] == ["SPEAKER_00", "SPEAKER_01", "2/SPEAKER_00"]
        assert [s["index"] for s in record["sessions"]] == [1, 2]
        assert record["stats"]["latency"]["count"] == 2  # the stored latencies; the new final had none
        assert record["stats"]["sentiment"]["counts"] == {"negative": 1, "neutral": 0, "positive": 1}
    finally:
        _close(book)

    book = _book(db_url, clock)
    try:
        again = book.store.get(meeting_id, "acme")  # type: ignore[union-attr]
        assert again == record
        listed = book.store.list(tenant_id="acme", state="ended")  # type: ignore[union-attr]
        row = next(m for m in listed if m["meeting_id"] == meeting_id)
        assert row["transcript_finals"] == 3 and "transcript" not in row
        globex = book.store.list(tenant_id="globex")  # type: ignore[union-attr]
        assert [(m["meeting_id"], m["transcript_finals"]) for m in globex if m["meeting_id"] == meeting_id] == [(meeting_id, 0)]
    finally:
        _close(book)


def test_meetings_of_an_older_database_are_found_by_their_tenant(tmp_path):
    """Before ids were the tenant's own, the meetings table had no meeting_id column and a row's key
    was the meeting id: such a database gets the column on start, and its meetings are still found
    by their tenant (and by any tenant's search on a server without keys)."""
    import sqlite3

    path = tmp_path / "old.db"
    record = {"meeting_id": "standup", "state": "ended", "tenant_id": "acme", "started_at": "2026-11-30T10:00:00+00:00"}
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE meetings (id VARCHAR(128) PRIMARY KEY, state VARCHAR(16), tenant_id VARCHAR(256), "
            "started_at DATETIME, ended_at DATETIME, record JSON)"
        )
        db.execute(
            "INSERT INTO meetings VALUES ('standup', 'ended', 'acme', '2026-11-30 10:00:00', NULL, ?)", (json.dumps(record),)
        )
    repository = MeetingRepository(open_engine(f"sqlite:///{path}"))
    try:
        assert repository.get("standup", "acme") == record and repository.find("standup") == record
        assert repository.get("standup", "globex") is None and repository.get("standup") is None
        repository.save({**record, "state": "live"})  # written again: the same row, now with its meeting_id
        assert repository.get("standup", "acme")["state"] == "live"  # type: ignore[index]
        assert [m["meeting_id"] for m in repository.list(tenant_id="acme")] == ["standup"]
        # A meeting without a tenant takes the id alone as its key: the older row moves aside, found still.
        repository.save({**record, "tenant_id": None, "state": "ended"})
        assert repository.get("standup")["tenant_id"] is None  # type: ignore[index]
        assert repository.get("standup", "acme")["state"] == "live"  # type: ignore[index]
    finally:
        repository.close()


def test_a_live_meeting_is_written_as_its_finals_arrive(tmp_path):
    """At most every WRITE_EVERY_S (the clock here moves 1 s per reading), so a dead server loses little."""
    from malsori.analysis.meetings import WRITE_EVERY_S

    clock = Clock()
    book = _book(f"sqlite:///{tmp_path / 'm.db'}", clock)
    try:
        meeting = book.join("m-live", "s-1")
        written = []
        for i in range(30):
            meeting.add_final("s-1", _final(i + 1, f"word{i}", i, i + 0.5), None)
            book.changed(meeting)
            book.written().result(10)
            written.append(len(book.store.get("m-live")["transcript"]))  # type: ignore[union-attr]
        assert written[-1] >= 30 - WRITE_EVERY_S and book.store.get("m-live")["state"] == "live"  # type: ignore[union-attr]
        assert len(set(written)) < 30  # not a write per final
    finally:
        _close(book)

    # The server died mid-meeting: a session joining later finds what was written, the lost session ended.
    book = _book(f"sqlite:///{tmp_path / 'm.db'}", clock)
    try:
        meeting = book.join("m-live", "s-2")
        assert meeting.parts["s-1"].end_reason == "lost" and len(meeting.transcript) == written[-1]
    finally:
        _close(book)
