// What the client tests share: the server's address and the test audio (given by
// tests/test_js_client.py in environment variables), and a TCP proxy that can lose a connection.
import { readFileSync } from "node:fs";
import net from "node:net";

/** An environment variable the pytest side sets; the tests cannot run without it. */
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through tests/test_js_client.py`);
  return value;
}

/** The server's ws:// base URL (no path). */
export const serverUrl = () => env("MALSORI_WS_URL");

/**
 * The test speech: 16 kHz pcm_s16le tone bursts; `phrases` ({text, start, end} in seconds) are the
 * finals its words must give, and where each is in the audio.
 */
export function speech() {
  const bytes = readFileSync(env("MALSORI_TEST_AUDIO"));
  const pcm = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  const phrases = JSON.parse(env("MALSORI_TEST_PHRASES"));
  return { pcm, phrases, finals: phrases.map((p) => p.text) };
}

/** `pcm` in frames of `size` samples (copies, so each can be sent and kept on its own). */
export function framesOf(pcm, size = 1600) {
  const out = [];
  for (let i = 0; i < pcm.length; i += size) out.push(pcm.slice(i, i + size));
  return out;
}

export const tick = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with the next `type` event's detail. */
export function next(target, type) {
  return new Promise((resolve) => target.addEventListener(type, ({ detail }) => resolve(detail), { once: true }));
}

/**
 * A TCP proxy in front of the server that can lose a connection the way a network does:
 * `blackhole()` stops passing the client's bytes on (they are lost, as in flight at a drop), and
 * `cut()` destroys every open connection without a close frame (the client sees 1006). New
 * connections pass through again.
 */
export async function lossyProxy(target) {
  const { hostname, port } = new URL(target);
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    const pair = { client, upstream, losing: false, lost: 0 };
    pairs.add(pair);
    client.on("data", (data) => {
      if (pair.losing) pair.lost += data.length;
      else upstream.write(data);
    });
    upstream.on("data", (data) => client.write(data));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}`,
    /** Bytes from the client lost so far on the open connections. */
    lostBytes: () => [...pairs].reduce((sum, pair) => sum + pair.lost, 0),
    blackhole() {
      for (const pair of pairs) pair.losing = true;
    },
    cut() {
      for (const pair of [...pairs]) {
        pair.client.resetAndDestroy ? pair.client.resetAndDestroy() : pair.client.destroy();
        pair.upstream.destroy();
      }
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
