// The client against a real server (tests/test_js_client.py starts it: the real app with the fake
// decoder, whose "speech" is tone bursts with known words, so every final is known exactly).
import assert from "node:assert/strict";
import { test } from "node:test";

import { CloseCode, MalsoriStream } from "../../../src/malsori/web/static/malsori-client.js";
import { framesOf, lossyProxy, next, serverUrl, speech, tick } from "./helpers.mjs";

const FAST_RETRY = { backoffMs: [50, 100, 200], stopTimeoutMs: 20000 };

/** Record every event a stream dispatches, by type, in order. */
function record(stream) {
  const seen = [];
  for (const type of ["ready", "partial", "final", "language", "error", "end", "state", "fatal"]) {
    stream.addEventListener(type, ({ detail }) => seen.push({ type, detail }));
  }
  return seen;
}

const finalTexts = (stream) => stream.finals.map((f) => f.text);

function assertEachEventOnce(seen) {
  const seqs = seen.filter((e) => ["partial", "final", "language", "error", "end"].includes(e.type)).map((e) => e.detail.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "events in seq order");
  assert.equal(new Set(seqs).size, seqs.length, `an event was delivered twice: ${seqs}`);
}

test("a stream of speech gets its finals, each once, then end", async () => {
  const { pcm, finals } = speech();
  const stream = new MalsoriStream({ url: `${serverUrl()}/v1/stream`, language: "en", wordTimestamps: true, ...FAST_RETRY });
  const seen = record(stream);
  const ready = await stream.connect();
  assert.equal(ready.type, "ready");
  assert.equal(ready.resumed, false);
  assert.equal(ready.seq, 0);
  assert.ok(ready.session_id && ready.resume_token);
  assert.equal(stream.state, "live");
  for (const frame of framesOf(pcm)) {
    stream.sendAudio(frame);
    await tick(2);
  }
  const end = await stream.stop();
  assert.equal(end.type, "end");
  assert.equal(end.reason, "stopped");
  assert.ok(Math.abs(end.audio_seconds - pcm.length / 16000) < 0.01, `audio_seconds ${end.audio_seconds}`);
  assert.deepEqual(finalTexts(stream), finals);
  assert.equal(stream.state, "stopped");
  assertEachEventOnce(seen);
  const final = stream.finals[0];
  assert.equal(final.type, "final");
  assert.ok(final.start < final.end && typeof final.latencyMs === "number");
  assert.deepEqual(final.words.map((w) => w.word.trim()), finals[0].split(" "));
  assert.ok(seen.some((e) => e.type === "partial" && typeof e.detail.stable === "string"), "partials arrive");
  assert.deepEqual(
    seen.filter((e) => e.type === "state").map((e) => e.detail.state),
    ["connecting", "live", "stopping", "stopped"],
  );
  assert.deepEqual(stream.figures(), {
    audioSentSeconds: pcm.length / 16000,
    audioDroppedSeconds: 0,
    words: finals.join(" ").split(" ").length,
    finals: finals.length,
  });
});

test("a connection lost mid-stream resumes, resends the audio that never arrived, and no final is lost or repeated", async () => {
  const { pcm, phrases, finals } = speech();
  const proxy = await lossyProxy(serverUrl());
  try {
    const stream = new MalsoriStream({ url: `${proxy.url}/v1/stream`, language: "en", ...FAST_RETRY });
    const seen = record(stream);
    await stream.connect();
    const frames = framesOf(pcm); // 100 ms each
    // A whole phrase is in flight when the link dies: lost unless the client sends it again.
    const lost = phrases[2];
    const lossFrom = Math.floor(lost.start * 10) - 1;
    const cutAt = Math.ceil(lost.end * 10) + 1;
    let sentAtCut = null;
    for (const [i, frame] of frames.entries()) {
      if (i === lossFrom) proxy.blackhole(); // from here the client's frames are lost on the way...
      if (i === cutAt) {
        await tick(100);
        assert.ok(proxy.lostBytes() >= (cutAt - lossFrom) * 3200, "frames were lost in flight");
        sentAtCut = stream.sentSamples;
        proxy.cut(); // ...then the link dies without a close frame
        await next(stream, "state"); // reconnecting; the next frames wait in the client's buffer
      }
      stream.sendAudio(frame);
      await tick(2);
    }
    await stream.stop();
    assert.equal(stream.resumes, 1);
    const resumed = seen.filter((e) => e.type === "ready").map((e) => e.detail)[1];
    assert.equal(resumed.resumed, true);
    // The server had only what came before the loss: the client resent from received_samples.
    assert.equal(sentAtCut, cutAt * 1600);
    assert.ok(resumed.received_samples <= lossFrom * 1600, `${resumed.received_samples} <= ${lossFrom * 1600}`);
    assert.deepEqual(finalTexts(stream), finals);
    assert.equal(stream.droppedSamples, 0);
    assertEachEventOnce(seen);
    const states = seen.filter((e) => e.type === "state").map((e) => e.detail.state);
    assert.deepEqual(states, ["connecting", "live", "reconnecting", "resumed", "stopping", "stopped"]);
  } finally {
    await proxy.close();
  }
});

test("dropConnection() (a drop the page can simulate) resumes with every final once, events replayed only once", async () => {
  const { pcm, finals } = speech();
  const stream = new MalsoriStream({ url: `${serverUrl()}/v1/stream`, language: "en", ...FAST_RETRY });
  const seen = record(stream);
  await stream.connect();
  const frames = framesOf(pcm);
  for (const [i, frame] of frames.entries()) {
    stream.sendAudio(frame);
    await tick(2);
    if (i === Math.floor(frames.length * 0.6)) {
      if (!stream.finals.length) await next(stream, "final"); // a final before the drop: the replay has one to skip
      stream.dropConnection();
    }
  }
  await stream.stop();
  assert.equal(stream.resumes, 1);
  assert.deepEqual(finalTexts(stream), finals);
  assertEachEventOnce(seen);
});

test("an invalid option surfaces as invalid_options (1008), not retried", async () => {
  const stream = new MalsoriStream({ url: `${serverUrl()}/v1/stream`, language: "xx", ...FAST_RETRY });
  const seen = record(stream);
  await assert.rejects(stream.connect(), (err) => {
    assert.equal(err.code, "invalid_options");
    assert.equal(err.closeCode, CloseCode.POLICY_VIOLATION);
    assert.match(err.message, /xx/);
    return true;
  });
  assert.equal(stream.state, "error");
  assert.equal(stream.error.code, "invalid_options");
  assert.ok(!seen.some((e) => e.type === "state" && e.detail.state === "reconnecting"));
  assert.deepEqual(seen.filter((e) => e.type === "error").map((e) => [e.detail.code, e.detail.fatal]), [["invalid_options", true]]);
  await assert.rejects(stream.done, { code: "invalid_options" });
});

test("audio the server cannot use ends the session as unsupported_audio (1003)", async () => {
  const stream = new MalsoriStream({ url: `${serverUrl()}/v1/stream`, language: "en", encoding: "pcm_f32le", ...FAST_RETRY });
  await stream.connect();
  stream.sendAudio(new Float32Array(1600).fill(0.1));
  stream.sendAudio(new Float32Array([0, NaN, 0, 0]));
  await assert.rejects(stream.done, (err) => {
    assert.equal(err.code, "unsupported_audio");
    assert.equal(err.closeCode, CloseCode.UNSUPPORTED_DATA);
    return true;
  });
  assert.equal(stream.state, "error");
  assert.throws(() => stream.sendAudio(new Float32Array(4)), { code: "unsupported_audio" });
  await assert.rejects(stream.stop(), { code: "unsupported_audio" });
});

test("the session limit surfaces as overloaded (1013), a retry-later error", async () => {
  const url = `${serverUrl()}/v1/stream`;
  const limit = Number(process.env.MALSORI_MAX_SESSIONS);
  const open = [];
  try {
    for (let i = 0; i < limit; i++) {
      const stream = new MalsoriStream({ url, language: "en", ...FAST_RETRY });
      await stream.connect();
      open.push(stream);
    }
    const refused = new MalsoriStream({ url, language: "en", ...FAST_RETRY });
    await assert.rejects(refused.connect(), (err) => {
      assert.equal(err.code, "overloaded");
      assert.equal(err.closeCode, CloseCode.TRY_AGAIN_LATER);
      assert.equal(err.retryLater, true);
      return true;
    });
  } finally {
    for (const stream of open) await stream.stop();
  }
});

// Last: the refused session stays on the server (detached, for its grace period) and takes a slot.
test("a refused resume (wrong token) surfaces as unauthorized (1008), not retried", async () => {
  const { pcm } = speech();
  const stream = new MalsoriStream({ url: `${serverUrl()}/v1/stream`, language: "en", ...FAST_RETRY });
  await stream.connect();
  stream.sendAudio(pcm.slice(0, 16000));
  stream.resumeToken = "not-the-token";
  stream.dropConnection();
  await assert.rejects(stream.done, (err) => {
    assert.equal(err.code, "unauthorized");
    assert.equal(err.closeCode, CloseCode.POLICY_VIOLATION);
    return true;
  });
  assert.equal(stream.resumes, 0);
});
