// The client without a server: close codes read by the same table the server closes by
// (src/malsori/protocol.py, handed over by tests/test_js_client.py as MALSORI_CLOSE_TABLE:
// {code: {error, resumable}}), and resume against a scripted socket that repeats itself, which a
// correct server never does (the real one is in stream.test.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";

import { MalsoriError, MalsoriStream, RESUMABLE_CLOSE_CODES, errorForCloseCode } from "../../../src/malsori/web/static/malsori-client.js";
import { env } from "./helpers.mjs";

test("each close code means what it means to the server and the Python client", () => {
  const table = JSON.parse(env("MALSORI_CLOSE_TABLE"));
  assert.ok(Object.keys(table).length >= 10);
  for (const [code, expected] of Object.entries(table)) {
    const error = errorForCloseCode(Number(code), "");
    assert.ok(error instanceof MalsoriError);
    assert.equal(error.code, expected.error, `close code ${code}`);
    assert.equal(error.closeCode, Number(code));
    assert.equal(RESUMABLE_CLOSE_CODES.has(Number(code)), expected.resumable, `close code ${code} resumable`);
  }
  assert.equal(errorForCloseCode(1013, "").retryLater, true);
  assert.equal(errorForCloseCode(1008, "").retryLater, false);
  assert.equal(errorForCloseCode(1011, "boom").message, "boom");
});

test("options the server would refuse fail before connecting", () => {
  const url = "ws://127.0.0.1:9/v1/stream";
  assert.throws(() => new MalsoriStream({ url, sampleRate: 96000 }), { code: "invalid_options" });
  assert.throws(() => new MalsoriStream({ url, encoding: "mp3" }), { code: "invalid_options" });
  const stream = new MalsoriStream({ url });
  assert.throws(() => stream.sendAudio(new Uint8Array(3)), { code: "invalid_options", message: /whole samples of 2 bytes/ });
  assert.throws(() => new MalsoriStream({}), { code: "invalid_options", message: /url/ }); // no page to take it from
});

/** A WebSocket the test scripts: it records what the client sends and delivers what the test says. */
class ScriptedSocket {
  static opened = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    ScriptedSocket.opened.push(this);
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }
  send(data) {
    this.sent.push(typeof data === "string" ? JSON.parse(data) : new Int16Array(data));
  }
  deliver(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  close(code = 1005, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason, wasClean: code !== 1006 }), 0);
  }
}

const until = async (condition) => {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 1));
};

test("after a drop the client resumes from its last seq, resends from received_samples and takes each event once", async () => {
  ScriptedSocket.opened = [];
  const stream = new MalsoriStream({ url: "ws://scripted/v1/stream", language: "en", WebSocket: ScriptedSocket, backoffMs: [1] });
  const finals = [];
  stream.addEventListener("final", ({ detail }) => finals.push(detail.seq));
  const ready = { type: "ready", seq: 0, session_id: "s-1", resume_token: "t-1", resumed: false, received_samples: 0, last_seq: 0 };
  const connected = stream.connect();
  await until(() => ScriptedSocket.opened[0]?.sent.length === 1);
  const first = ScriptedSocket.opened[0];
  assert.deepEqual(first.sent[0], { type: "start", sample_rate: 16000, encoding: "pcm_s16le", task: "transcribe", language: "en" });
  first.deliver(ready);
  await connected;
  const audio = Int16Array.from({ length: 4000 }, (_, i) => i);
  stream.sendAudio(audio.subarray(0, 1600));
  stream.sendAudio(audio.subarray(1600, 3200));
  first.deliver({ type: "final", seq: 1, text: "one", start: 0, end: 0.1 });
  first.deliver({ type: "final", seq: 2, text: "two", start: 0.1, end: 0.2 });
  first.close(1006); // the link dies; the server got only the first 1000 samples

  await until(() => ScriptedSocket.opened.length === 2 && ScriptedSocket.opened[1].sent.length === 1);
  stream.sendAudio(audio.subarray(3200)); // while reconnecting: kept for the resume
  const second = ScriptedSocket.opened[1];
  assert.deepEqual(second.sent[0], {
    type: "start", sample_rate: 16000, encoding: "pcm_s16le", task: "transcribe", language: "en",
    session_id: "s-1", resume_token: "t-1", last_seq: 2,
  });
  second.deliver({ ...ready, resumed: true, received_samples: 1000, last_seq: 3 });
  const resent = second.sent.slice(1);
  assert.deepEqual(Array.from(new Int16Array(resent.flatMap((a) => Array.from(a)))), Array.from(audio.subarray(1000)));
  second.deliver({ type: "final", seq: 2, text: "two", start: 0.1, end: 0.2 }); // a repeat
  second.deliver({ type: "final", seq: 3, text: "three", start: 0.2, end: 0.3 });
  second.deliver({ type: "final", seq: 1, text: "one", start: 0, end: 0.1 }); // a stale one
  assert.deepEqual(finals, [1, 2, 3]);
  assert.equal(stream.resumes, 1);
  assert.equal(stream.state, "resumed");

  const stopped = stream.stop();
  assert.deepEqual(second.sent.at(-1), { type: "stop" });
  second.deliver({ type: "end", seq: 4, reason: "stopped", audio_seconds: 0.25 });
  second.close(1000);
  assert.equal((await stopped).seq, 4);
  assert.equal(stream.state, "stopped");
});

test("a session the server ended other than by stop fails with session_ended", async () => {
  ScriptedSocket.opened = [];
  const stream = new MalsoriStream({ url: "ws://scripted/v1/stream", WebSocket: ScriptedSocket });
  const connected = stream.connect();
  await until(() => ScriptedSocket.opened[0]?.sent.length === 1);
  ScriptedSocket.opened[0].deliver({ type: "ready", seq: 0, session_id: "s", resume_token: "t", resumed: false, received_samples: 0 });
  await connected;
  ScriptedSocket.opened[0].deliver({ type: "end", seq: 1, reason: "shutdown", audio_seconds: 0 });
  await assert.rejects(stream.done, { code: "session_ended", message: /shut down/ });
  assert.equal(stream.state, "error");
});
