"""Graceful stop of `malsori serve`: what SIGTERM costs and what it keeps, with the drain and without.

For N live sessions (each streams its own LJ Speech sentences at real-time pace and stops sending in
the middle of speech, so its last phrase has no final yet), the server gets SIGTERM; then:
- finals reaching the end of the sent audio (the open phrase finalized), WER of all finals against the
  references, the `end` reason and close code each client saw;
- seconds from SIGTERM to the last final and to the process's exit.
The baseline in the same run is `MALSORI__SERVER__DRAIN_TIMEOUT_S=0`: uvicorn's own shutdown, which
closes the sockets at once (1012). A file job running at SIGTERM: seconds to exit, and whether it
finishes after a restart (attempts, text).

    flock /tmp/malsori-bench.lock .venv/bin/python bench/drain.py [--sessions 1,4,8] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import tempfile
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import websockets
from common import REPO, TESTDATA, free_port, machine_line, replace_section, serve_command

SR = 16000
CLIPS = [f"en/ljspeech/LJ001-{k:04d}.flac" for k in range(1, 33)]


class Server:
    def __init__(self, data_dir: Path, drain_s: float) -> None:
        self.port, self.data_dir, self.drain_s = free_port(), data_dir, drain_s
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        env = {**os.environ, "MALSORI__SERVER__DRAIN_TIMEOUT_S": str(self.drain_s), "PYTHONPATH": str(REPO / "src")}
        command = serve_command(self.port, data_dir=self.data_dir)
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/is_ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready")

    def terminate(self) -> float:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return time.monotonic()

    def wait(self) -> float:
        assert self.process is not None
        self.process.wait(120)
        return time.monotonic()


def _audio(names: list[str]) -> tuple[np.ndarray, str]:
    from malsori.engine import decode_audio

    refs = {row.split("\t")[0]: row.split("\t")[4] for row in (TESTDATA / "manifest.tsv").read_text().splitlines()[1:]}
    gap = np.zeros(int(0.6 * SR), dtype=np.float32)
    parts = []
    for name in names:
        parts += [decode_audio(TESTDATA / name), gap]
    return np.concatenate(parts[:-1]), " ".join(refs[n] for n in names)  # ends in speech: no pause after it


async def _session(url: str, audio: np.ndarray, sent: asyncio.Event) -> tuple[list[dict], int | None]:
    from malsori.engine import float32_to_pcm16

    events: list[dict] = []
    async with websockets.connect(url.replace("http", "ws") + "/v1/stream", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le", "language": "en"}))
        json.loads(await ws.recv())

        async def receive() -> None:
            try:
                async for raw in ws:
                    events.append({**json.loads(raw), "at": time.monotonic()})
            except websockets.ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        t0, n = loop.time(), SR // 10
        for i in range(0, len(audio), n):
            await ws.send(float32_to_pcm16(audio[i : i + n]))
            await asyncio.sleep(max(0.0, (i + n) / SR - (loop.time() - t0)))
        sent.set()
        await receiver
    return events, ws.close_code


def live_row(drain_s: float, sessions: int, root: Path) -> dict:
    from malsori.evaluation import wer

    server = Server(root / f"live-{drain_s}-{sessions}", drain_s).start()
    streams = [_audio(CLIPS[(3 * k) % 30 : (3 * k) % 30 + 3]) for k in range(sessions)]

    async def run():
        sent = [asyncio.Event() for _ in streams]
        tasks = [asyncio.create_task(_session(server.url, audio, s)) for (audio, _), s in zip(streams, sent, strict=True)]
        for event in sent:
            await event.wait()
        signalled = server.terminate()
        return signalled, await asyncio.gather(*tasks)

    signalled, results = asyncio.run(run())
    exited = server.wait()
    complete, last, texts, ends = 0, [], [], set()
    for (events, code), (audio, _) in zip(results, streams, strict=True):
        finals = [e for e in events if e["type"] == "final"]
        complete += bool(finals) and finals[-1]["end"] >= len(audio) / SR - 1.0
        last += [finals[-1]["at"] - signalled] if finals else []
        texts.append(" ".join(e["text"] for e in finals))
        end = next((e.get("reason") for e in events if e["type"] == "end"), None)
        ends.add(f"{end or 'no end'} / {code}")
    return {
        "mode": f"drain {drain_s:g} s" if drain_s else "no drain (0 s)",
        "sessions": sessions,
        "complete": f"{complete}/{sessions}",
        "wer": wer(" ".join(r for _, r in streams), " ".join(texts)),
        "last_final_s": max(last) if last else float("nan"),
        "exit_s": exited - signalled,
        "ends": ", ".join(sorted(ends)),
    }


def job_row(root: Path) -> dict:
    from malsori.evaluation import wer

    audio, reference = _audio(CLIPS)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    server = Server(root / "job", 20.0).start()
    job = httpx.post(f"{server.url}/v1/jobs", files={"file": ("talk.wav", buffer.getvalue())}, data={"language": "en"}).json()
    while (state := httpx.get(f"{server.url}/v1/jobs/{job['id']}").json())["progress"] < 0.3:
        time.sleep(0.1)
    progress = state["progress"]
    signalled = server.terminate()
    exit_s = server.wait() - signalled
    server.start()
    restarted = time.monotonic()
    while (state := httpx.get(f"{server.url}/v1/jobs/{job['id']}").json())["state"] in ("queued", "running"):
        time.sleep(0.2)
    done_s = time.monotonic() - restarted
    server.terminate()
    server.wait()
    return {
        "progress": progress,
        "exit_s": exit_s,
        "state": state["state"],
        "attempts": state["attempts"],
        "done_s": done_s,
        "wer": wer(reference, state["result"]["text"]) if state["state"] == "succeeded" else float("nan"),
        "audio_s": len(audio) / SR,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,4,8")
    parser.add_argument("--drain-s", type=float, default=20.0)
    parser.add_argument("--write", action="store_true", help="replace the section of docs/benchmarks.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="malsori-drain-") as tmp:
        for sessions in [int(n) for n in args.sessions.split(",")]:
            for drain_s in (args.drain_s, 0.0):
                row = live_row(drain_s, sessions, Path(tmp))
                print(row, flush=True)
                rows.append(row)
        job = job_row(Path(tmp))
        print(job, flush=True)
    lines = [
        "Command: `flock /tmp/malsori-bench.lock .venv/bin/python bench/drain.py --write`  ",
        f"Machine: {machine_line()}  ",
        "Each session streams three LJ Speech sentences (0.6 s pauses) at real-time pace over `/v1/stream` and stops "
        "sending in the middle of speech (no pause after its last sentence, so that phrase has no final yet); then the "
        "`malsori serve` process (bundled `base`) gets SIGTERM. *Complete*: sessions whose finals reach the end of the "
        "audio sent. WER: all finals against the references. The baseline is the same server with "
        "`MALSORI__SERVER__DRAIN_TIMEOUT_S=0` (uvicorn's own shutdown), in the same run.",
        "",
        "| mode | sessions | complete | WER | last final after SIGTERM (s) | exit after SIGTERM (s) | end / close code |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        figures = f"{r['wer']:.1%} | {r['last_final_s']:.2f} | {r['exit_s']:.2f}"
        lines.append(f"| {r['mode']} | {r['sessions']} | {r['complete']} | {figures} | {r['ends']} |")
    lines += [
        "",
        f"A job of {job['audio_s']:.0f} s of audio (the 32 sentences as one file) at {job['progress']:.0%} when SIGTERM came: "
        f"the process exited after {job['exit_s']:.2f} s (the job went back to the queue); after a restart it finished in "
        f"{job['done_s']:.1f} s, state {job['state']}, attempts {job['attempts']}, WER {job['wer']:.1%}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section("## Graceful stop (SIGTERM)", text)


if __name__ == "__main__":
    main()
