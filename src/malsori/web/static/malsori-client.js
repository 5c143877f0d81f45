// malsori's JavaScript client for the /v1/stream protocol (docs/protocol.md), for browsers and Node.
// A plain ES module: no build step, no dependencies. The server serves it at /static/malsori-client.js.
//
//   import { MalsoriStream } from "/static/malsori-client.js";     // browser
//   const stream = new MalsoriStream({ url: "ws://127.0.0.1:8000/v1/stream", language: "en" });
//   stream.addEventListener("final", ({ detail }) => console.log(detail.text));
//   await stream.connect();                 // resolves with the `ready` event
//   stream.sendAudio(int16Frame);           // PCM in the session's encoding, any time
//   const end = await stream.stop();        // the last finals, then `end`
//
// In Node, the global WebSocket (Node 22+; Node 20 with --experimental-websocket) is used, or pass
// a constructor: `new MalsoriStream({ url, WebSocket: require("ws") })`.
//
// Resume: a dropped connection is not the end of a session. The server keeps it for a grace period,
// so the client reconnects with session_id, resume_token and last_seq; the server replays the events
// after last_seq, and events are deduplicated here by seq. The last `bufferSeconds` of audio are
// kept: the resumed `ready` says how many samples really arrived (`received_samples`), and the
// client resends from there, so audio in flight at the drop and audio given while disconnected are
// transcribed exactly once.

/**
 * @typedef {object} ReadyEvent
 * @property {"ready"} type
 * @property {0} seq
 * @property {string} session_id
 * @property {string} resume_token
 * @property {boolean} resumed
 * @property {number} received_samples audio the session has, in samples at the client's rate
 * @property {number} last_seq highest seq the session has issued
 * @property {number} sample_rate
 * @property {"pcm_s16le"|"pcm_f32le"} encoding
 * @property {string|null} language
 * @property {"transcribe"|"translate"} task
 * @property {string} preset
 * @property {Object<string, number|boolean>} config the effective preset values
 */
/**
 * @typedef {object} PartialEvent The phrase being spoken; each partial replaces the previous one.
 * @property {"partial"} type
 * @property {number} seq
 * @property {string} text stable + unstable
 * @property {string} stable the prefix two consecutive decodes agreed on
 * @property {string} unstable may still change
 * @property {number} start seconds of the stream's audio
 * @property {number} end
 */
/**
 * @typedef {object} Word
 * @property {string} word
 * @property {number} start
 * @property {number} end
 * @property {number} probability
 */
/**
 * @typedef {object} FinalEvent Settled text of one phrase; never changes, never overlaps another.
 * @property {"final"} type
 * @property {number} seq
 * @property {string} text
 * @property {number} start
 * @property {number} end
 * @property {string|null} language
 * @property {Word[]} [words] only with `wordTimestamps`
 * @property {number|null} latencyMs added by this client: from handing it the audio at `end` to receiving this
 */
/**
 * @typedef {object} LanguageEvent
 * @property {"language"} type
 * @property {number} seq
 * @property {string} language
 * @property {number} probability
 */
/**
 * @typedef {object} ServerErrorEvent
 * @property {"error"} type
 * @property {number} seq
 * @property {string} code `invalid_options`, `unsupported_audio`, `overloaded`, ...
 * @property {string} message
 * @property {boolean} fatal when true the server then closes the socket
 */
/**
 * @typedef {object} EndEvent The last event of a session.
 * @property {"end"} type
 * @property {number} seq
 * @property {"stopped"|"expired"|"shutdown"|"error"} reason
 * @property {number} audio_seconds
 */
/** @typedef {ReadyEvent|PartialEvent|FinalEvent|LanguageEvent|ServerErrorEvent|EndEvent} StreamEvent */
/**
 * @typedef {"idle"|"connecting"|"live"|"reconnecting"|"resumed"|"stopping"|"stopped"|"error"} StreamState
 */
/**
 * @typedef {object} StreamOptions
 * @property {string} [url] ws(s)://host/v1/stream; in a browser, the page's own server by default
 * @property {number} [sampleRate] 8000..48000 (16000)
 * @property {"pcm_s16le"|"pcm_f32le"} [encoding] ("pcm_s16le")
 * @property {string|null} [language] Whisper code; null or "" detects it
 * @property {"transcribe"|"translate"} [task]
 * @property {"low-latency"|"balanced"|"accurate"|"korean"|null} [preset] null: the server's default
 * @property {boolean} [wordTimestamps] finals carry `words`
 * @property {Object<string, number|boolean>} [options] single preset values (`{endpoint_s: 0.5}`)
 * @property {boolean} [stats] the server sends `stats` events (running statistics, about every second)
 * @property {string|null} [meetingId] the session joins this meeting (kept by the server: GET /v1/meetings/{id})
 * @property {number} [bufferSeconds] recent audio kept to resend after a resume (30, the server's grace)
 * @property {number} [graceSeconds] how long to keep trying to reconnect after a drop (30)
 * @property {number[]} [backoffMs] waits between reconnect attempts; the last one repeats
 * @property {number} [stopTimeoutMs] how long stop() waits for the server's `end` (60000)
 * @property {typeof WebSocket} [WebSocket] a WebSocket constructor (e.g. the `ws` package in Node)
 * @property {() => Promise<string|null>} [token] where API keys are configured: called before each
 *   (re)connection for a short-lived token (POST /v1/tokens), sent as the first message
 */

export const SAMPLE_RATE = 16000;
export const ENCODINGS = Object.freeze({ pcm_s16le: 2, pcm_f32le: 4 });

/** WebSocket close codes that malsori sends or a client meets (src/malsori/protocol.py). */
export const CloseCode = Object.freeze({
  NORMAL: 1000, // after the session's `end` event
  GOING_AWAY: 1001,
  UNSUPPORTED_DATA: 1003, // audio in the wrong format
  ABNORMAL: 1006, // never sent: the link died without a close frame
  POLICY_VIOLATION: 1008, // protocol broken, invalid value, resume refused, session taken over
  MESSAGE_TOO_BIG: 1009, // a frame over streaming.max_frame_bytes
  INTERNAL_ERROR: 1011, // a server bug
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013, // session limit, saturated decoder, model still loading
  BAD_GATEWAY: 1014,
  UNAUTHENTICATED: 4401, // no valid API key or token
  FORBIDDEN: 4403, // the key lacks the transcribe scope
});

/**
 * Closes that mean the link broke, not that the server ended the session: the client resumes.
 * (RESUMABLE_CLOSE_CODES of malsori.protocol; its "no close frame" is 1006 in the WebSocket API.)
 */
export const RESUMABLE_CLOSE_CODES = Object.freeze(
  new Set([CloseCode.GOING_AWAY, CloseCode.ABNORMAL, CloseCode.SERVICE_RESTART, CloseCode.BAD_GATEWAY]),
);

// The error code a close alone means (no `error` event before it): malsori.protocol's CLOSE_CODES,
// the first class listed for each code.
const CLOSE_CODE_ERRORS = new Map([
  [CloseCode.TRY_AGAIN_LATER, "overloaded"],
  [CloseCode.MESSAGE_TOO_BIG, "audio_too_large"],
  [CloseCode.UNSUPPORTED_DATA, "unsupported_audio"],
  [CloseCode.POLICY_VIOLATION, "protocol_error"],
  [CloseCode.INTERNAL_ERROR, "internal_error"],
  [CloseCode.UNAUTHENTICATED, "unauthenticated"],
  [CloseCode.FORBIDDEN, "forbidden"],
]);

/** A failed session: `code` is the server's stable error code (or one of the client's, below). */
export class MalsoriError extends Error {
  /**
   * @param {string} message
   * @param {{code?: string, closeCode?: number|null}} [details]
   */
  constructor(message, { code = "error", closeCode = null } = {}) {
    super(message);
    this.name = "MalsoriError";
    /** `invalid_options`, `protocol_error`, `unauthorized`, `not_found`, `unsupported_audio`,
     * `audio_too_large`, `overloaded`, `not_ready`, `internal_error`; the client's own:
     * `connection_failed` (could not connect or resume in time), `server_closed` (closed without
     * a reason), `session_ended` (the session ended other than by stop: expired, shutdown). */
    this.code = code;
    /** The WebSocket close code that ended the session, when one did. */
    this.closeCode = closeCode;
  }

  /** True when trying again later may work (the server was busy or still loading its model). */
  get retryLater() {
    return this.code === "overloaded" || this.code === "not_ready";
  }
}

/**
 * The error for a connection closed with `code` and no `error` event before it.
 * @param {number|null} code
 * @param {string} [reason]
 */
export function errorForCloseCode(code, reason = "") {
  const message = reason || `the server closed the connection (code ${code})`;
  return new MalsoriError(message, { code: CLOSE_CODE_ERRORS.get(code) || "server_closed", closeCode: code });
}

const OPEN = 1; // WebSocket.OPEN, the same in every implementation
const DEFAULT_BACKOFF_MS = [250, 500, 1000, 2000, 3000, 5000];
const END_REASONS = { error: "the server failed", expired: "the session expired", shutdown: "the server shut down" };

/**
 * One live transcription session over /v1/stream. Events (`addEventListener(type, ({detail}) => ...)`):
 * - the server's, each once, in order: `ready` (every connection, resumed or not), `partial`,
 *   `final` (with `latencyMs`), `language`, `error` (a ServerErrorEvent), `end`, and with
 *   `stats: true` `stats` (the latest statistics: each supersedes the one before);
 * - the client's: `state` ({state, resumes, attempt, error, confirmed}), `fatal` ({error}: the
 *   session failed), `figures` (see figures()), and with the microphone `level` ({rms}) and `format`.
 */
export class MalsoriStream extends EventTarget {
  /** @param {StreamOptions} [options] */
  constructor(options = {}) {
    super();
    this.url = options.url || defaultUrl();
    this.token = options.token || null;
    this.sampleRate = options.sampleRate || SAMPLE_RATE;
    this.encoding = options.encoding || "pcm_s16le";
    if (!(this.encoding in ENCODINGS)) {
      throw new MalsoriError(`encoding must be one of ${Object.keys(ENCODINGS).join(", ")}, not ${this.encoding}`, { code: "invalid_options" });
    }
    if (!Number.isInteger(this.sampleRate) || this.sampleRate < 8000 || this.sampleRate > 48000) {
      throw new MalsoriError(`sample rate must be an integer from 8000 to 48000 Hz, not ${this.sampleRate}`, { code: "invalid_options" });
    }
    this.bytesPerSample = ENCODINGS[this.encoding];
    this.startFields = {
      language: options.language || null,
      task: options.task || "transcribe",
      preset: options.preset || null,
      wordTimestamps: Boolean(options.wordTimestamps),
      options: options.options || null,
      stats: Boolean(options.stats),
      meetingId: options.meetingId || null,
    };
    this.bufferSamples = (options.bufferSeconds ?? 30) * this.sampleRate;
    this.graceMs = (options.graceSeconds ?? 30) * 1000;
    this.backoffMs = options.backoffMs || DEFAULT_BACKOFF_MS;
    this.stopTimeoutMs = options.stopTimeoutMs ?? 60000;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new MalsoriError(
        "no WebSocket: use Node 22+, Node 20 with --experimental-websocket, or pass {WebSocket} (the `ws` package)",
        { code: "invalid_options" },
      );
    }

    /** @type {StreamState} */
    this.state = "idle";
    /** @type {string|null} */
    this.sessionId = null;
    this.resumeToken = null;
    this.lastSeq = 0; // highest event seq received (0: none yet)
    this.resumes = 0; // how many times the session was resumed after a drop
    /** @type {FinalEvent[]} every final of the session, once, in order */
    this.finals = [];
    /** The latest `stats` event (with `stats: true`), or null. */
    this.lastStats = null;
    /** @type {MalsoriError|null} */
    this.error = null;
    this.ended = false; // the server's `end` arrived

    this.ws = null;
    this.ready = false; // the current socket has had its `ready`
    this.stopping = false;
    this.dropping = null; // the socket dropConnection() closed: its close is a drop, whatever its code
    this.pendingError = null; // a fatal `error` event's error, raised when its close comes
    this.dropStartedAt = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.history = []; // recent audio: {offset (sample count of its first sample), data (ArrayBuffer)}
    this.capturedSamples = 0; // samples handed to sendAudio
    this.sentSamples = 0; // sample count up to which the server has the audio
    this.streamBase = null; // sample count of the session's first sample (its stream time 0)
    this.droppedSamples = 0; // audio lost because a reconnect outlasted the buffer
    this.timeline = []; // [seconds handed over at the end of a chunk, performance.now() then]
    this.microphone = null;

    let resolveDone, rejectDone;
    /** @type {Promise<EndEvent>} settles when the session ends: its `end` event, or its error */
    this.done = new Promise((resolve, reject) => {
      resolveDone = resolve;
      rejectDone = reject;
    });
    this.done.catch(() => {}); // awaited or not: never an unhandled rejection
    this.settle = { resolve: resolveDone, reject: rejectDone };
  }

  // -- public ----------------------------------------------------------------------------------

  /**
   * Open the session. Resolves with its first `ready`; rejects with a MalsoriError when the server
   * refuses it (or cannot be reached within the grace period).
   * @returns {Promise<ReadyEvent>}
   */
  connect() {
    if (this.state !== "idle") throw new MalsoriError("this stream is already connected; use a new one for a new session", { code: "protocol_error" });
    const first = new Promise((resolve, reject) => {
      const onReady = ({ detail }) => {
        this.removeEventListener("fatal", onFatal);
        resolve(detail);
      };
      const onFatal = ({ detail }) => {
        this.removeEventListener("ready", onReady);
        reject(detail.error);
      };
      this.addEventListener("ready", onReady, { once: true });
      this.addEventListener("fatal", onFatal, { once: true });
    });
    this.setState("connecting");
    this.openSocket();
    return first;
  }

  /**
   * Hand over audio in the session's encoding (an ArrayBuffer or a typed array: Int16Array for
   * pcm_s16le, Float32Array for pcm_f32le). It is sent at once when connected, else on (re)connect.
   * @param {ArrayBuffer|ArrayBufferView} pcm
   */
  sendAudio(pcm) {
    if (this.error) throw this.error;
    if (this.stopping) throw new MalsoriError("audio after stop()", { code: "protocol_error" });
    const data = toArrayBuffer(pcm);
    if (data.byteLength % this.bytesPerSample) {
      throw new MalsoriError(`${this.encoding} audio must come in whole samples of ${this.bytesPerSample} bytes; got ${data.byteLength} bytes`, {
        code: "invalid_options",
      });
    }
    if (!data.byteLength) return;
    this.history.push({ offset: this.capturedSamples, data });
    this.capturedSamples += data.byteLength / this.bytesPerSample;
    this.timeline.push([this.capturedSamples / this.sampleRate, performance.now()]);
    if (this.timeline.length > 3000) this.timeline.splice(0, 1000); // ~5 min of 100 ms frames
    while (this.history.length && this.capturedSamples - this.history[0].offset - this.sampleCount(this.history[0]) >= this.bufferSamples) {
      this.history.shift();
    }
    if (this.ready) this.flush();
  }

  /**
   * The audio is over: stop the microphone if any, send what is left, ask the server to finish, and
   * wait for its `end` (at most `stopTimeoutMs`). Resolves with the `end` event (null when the server
   * never confirmed it); rejects with the session's error if it failed.
   * @returns {Promise<EndEvent|null>}
   */
  async stop() {
    if (this.state === "idle") return null;
    if (!this.stopping) {
      this.stopping = true;
      this.closeMicrophone();
      if (!this.ended && !this.error) this.setState("stopping");
      if (this.ready) this.sendStop();
    }
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve(null), this.stopTimeoutMs); // the server owes us `end`; never hang
    });
    let end;
    try {
      end = await Promise.race([this.done, timeout]);
    } finally {
      clearTimeout(timer);
      clearTimeout(this.retryTimer);
      const ws = this.ws;
      this.ws = null; // closed on purpose: onClose must not reconnect
      if (ws) ws.close(CloseCode.NORMAL, "done");
    }
    if (this.state !== "stopped") this.setState("stopped", { confirmed: Boolean(end) });
    return end;
  }

  /** Close the socket now without a stop message, as a network drop would: the client resumes. */
  dropConnection() {
    if (!this.ws) return;
    this.dropping = this.ws;
    this.dropping.close(4000, "connection dropped by the client");
  }

  /** Figures of the session so far. */
  figures() {
    let words = 0;
    for (const final of this.finals) words += countWords(final.text);
    return {
      audioSentSeconds: (this.sentSamples - (this.streamBase || 0)) / this.sampleRate,
      audioDroppedSeconds: this.droppedSamples / this.sampleRate,
      words,
      finals: this.finals.length,
    };
  }

  /**
   * Browser only: stream the microphone (16 kHz mono int16 from capture-worklet.js). Call before or
   * after connect(); stop() closes it. Rejects when the microphone cannot be opened.
   * @param {{frameMs?: number, workletUrl?: string|URL}} [options]
   */
  async startMicrophone(options = {}) {
    if (this.sampleRate !== SAMPLE_RATE || this.encoding !== "pcm_s16le") {
      throw new MalsoriError("the microphone gives 16 kHz pcm_s16le: create the stream with those", { code: "invalid_options" });
    }
    const microphone = await Microphone.open(options);
    microphone.addEventListener("format", ({ detail }) => this.emit("format", detail));
    microphone.addEventListener("frame", ({ detail }) => {
      if (this.stopping || this.error) return;
      this.sendAudio(detail.pcm);
      this.emit("level", { rms: detail.rms });
    });
    this.microphone = microphone;
  }

  // -- the socket ------------------------------------------------------------------------------

  openSocket() {
    const resuming = this.sessionId !== null;
    const ws = new this.WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.ready = false;
    ws.onopen = async () => {
      if (ws !== this.ws) return;
      if (this.token) {
        // A fresh token for every connection: a resume may come long after the first one expired.
        let token = "";
        try {
          token = (await this.token()) || "";
        } catch {
          // sent empty: the server refuses it with close code 4401 and says why
        }
        if (ws !== this.ws) return;
        if (token) ws.send(JSON.stringify({ type: "auth", token }));
      }
      const start = { type: "start", sample_rate: this.sampleRate, encoding: this.encoding, task: this.startFields.task };
      if (this.startFields.language) start.language = this.startFields.language;
      if (this.startFields.preset) start.preset = this.startFields.preset;
      if (this.startFields.wordTimestamps) start.word_timestamps = true;
      if (this.startFields.options) start.options = this.startFields.options;
      if (this.startFields.stats) start.stats = true;
      if (this.startFields.meetingId) start.meeting_id = this.startFields.meetingId;
      if (resuming) Object.assign(start, { session_id: this.sessionId, resume_token: this.resumeToken, last_seq: this.lastSeq });
      ws.send(JSON.stringify(start));
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws || typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message === "object") this.onMessage(message);
    };
    ws.onerror = () => {}; // a close event always follows; it decides
    ws.onclose = (event) => this.onClose(ws, event);
  }

  onMessage(message) {
    if (message.type === "pong") return;
    if (message.type === "ready") {
      this.onReady(message); // about the connection, not the session: never deduplicated
      return;
    }
    // Replayed or repeated events after a resume: each seq is handled exactly once. Seq 0 is about
    // the connection, not the session (a refusal's error), and is never replayed.
    if (typeof message.seq === "number" && message.seq > 0) {
      if (message.seq <= this.lastSeq) return;
      this.lastSeq = message.seq;
    }
    switch (message.type) {
      case "partial":
        this.emit("partial", message);
        break;
      case "final": {
        const final = { ...message, latencyMs: this.latencyOf(message.end) };
        this.finals.push(final);
        this.emit("final", final);
        this.emit("figures", this.figures());
        break;
      }
      case "language":
        this.emit("language", message);
        break;
      case "stats":
        this.lastStats = message;
        this.emit("stats", message);
        break;
      case "error":
        if (message.fatal !== false) this.pendingError = new MalsoriError(message.message || message.code, { code: message.code });
        this.emit("error", message);
        break;
      case "end":
        this.ended = true;
        this.emit("end", message);
        if (this.pendingError) this.fail(this.pendingError);
        else if (message.reason && message.reason !== "stopped") {
          this.fail(new MalsoriError(`session ended: ${END_REASONS[message.reason] || message.reason}`, { code: "session_ended" }));
        } else this.settle.resolve(message);
        break;
      default:
        break;
    }
  }

  onReady(message) {
    const resumed = Boolean(message.resumed);
    this.sessionId = message.session_id;
    if (message.resume_token) this.resumeToken = message.resume_token;
    this.ready = true;
    this.attempt = 0;
    this.dropStartedAt = null;
    if (resumed) {
      this.resumes += 1;
      // The server's count is the truth: frames in flight when the socket died never arrived.
      if (typeof message.received_samples === "number" && this.streamBase !== null) {
        this.sentSamples = this.streamBase + message.received_samples;
      }
    }
    this.flush();
    if (this.stopping) {
      this.sendStop();
    } else if (!this.ended) {
      this.setState(resumed ? "resumed" : "live");
    }
    this.emit("ready", message);
  }

  /** Send every sample the server does not have yet (from `sentSamples` on). */
  flush() {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return;
    const oldest = this.history.length ? this.history[0].offset : this.capturedSamples;
    if (this.streamBase === null) this.streamBase = this.sentSamples = oldest;
    if (this.sentSamples < oldest) {
      this.droppedSamples += oldest - this.sentSamples;
      this.sentSamples = oldest;
    }
    let sent = false;
    for (const chunk of this.history) {
      const samples = this.sampleCount(chunk);
      if (chunk.offset + samples <= this.sentSamples) continue;
      const skip = this.sentSamples - chunk.offset; // > 0 only when the server got part of a chunk
      ws.send(skip > 0 ? chunk.data.slice(skip * this.bytesPerSample) : chunk.data);
      this.sentSamples = chunk.offset + samples;
      sent = true;
    }
    if (sent) this.emit("figures", this.figures());
  }

  sendStop() {
    if (this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify({ type: "stop" }));
  }

  onClose(ws, event) {
    const dropped = ws === this.dropping;
    if (dropped) this.dropping = null;
    if (ws !== this.ws) return;
    this.ws = null;
    this.ready = false;
    if (this.ended || this.error) return;
    if (this.pendingError) {
      this.pendingError.closeCode = event.code;
      this.fail(this.pendingError);
      return;
    }
    if (!dropped && !RESUMABLE_CLOSE_CODES.has(event.code)) {
      if (event.code === CloseCode.NORMAL) {
        this.fail(new MalsoriError("the server closed the session before its end event", { code: "server_closed", closeCode: event.code }));
      } else {
        this.fail(errorForCloseCode(event.code, event.reason));
      }
      return;
    }
    if (this.stopping && this.sessionId === null) {
      this.fail(new MalsoriError("the connection closed before the session started", { code: "connection_failed", closeCode: event.code }));
      return;
    }
    const now = performance.now();
    if (this.dropStartedAt === null) this.dropStartedAt = now;
    if (now - this.dropStartedAt > this.graceMs) {
      const what = this.sessionId === null ? `could not connect to ${this.url}` : `could not resume session ${this.sessionId}`;
      this.fail(new MalsoriError(`${what} within ${this.graceMs / 1000} s`, { code: "connection_failed", closeCode: event.code }));
      return;
    }
    const delay = this.backoffMs[Math.min(this.attempt, this.backoffMs.length - 1)];
    this.attempt += 1;
    this.setState("reconnecting");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.openSocket(), delay);
  }

  // -- helpers ---------------------------------------------------------------------------------

  /** Milliseconds from handing over the audio at stream time `end` to now. */
  latencyOf(streamEnd) {
    if (typeof streamEnd !== "number") return null;
    const end = streamEnd + (this.streamBase || 0) / this.sampleRate; // seconds handed over
    let previous = [0, null];
    for (const entry of this.timeline) {
      if (entry[0] >= end) {
        // The chunk ending at entry[0] was handed over at entry[1]; step back to the instant of `end`.
        return Math.max(0, performance.now() - (entry[1] - (entry[0] - end) * 1000));
      }
      previous = entry;
    }
    return previous[1] === null ? null : Math.max(0, performance.now() - previous[1]);
  }

  sampleCount(chunk) {
    return chunk.data.byteLength / this.bytesPerSample;
  }

  closeMicrophone() {
    if (this.microphone) this.microphone.close();
    this.microphone = null;
  }

  fail(error) {
    if (this.error) return;
    this.error = error;
    clearTimeout(this.retryTimer);
    this.closeMicrophone();
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= OPEN) ws.close(CloseCode.NORMAL, "failed");
    this.setState("error", { error });
    this.settle.reject(error);
    this.emit("fatal", { error });
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, resumes: this.resumes, attempt: this.attempt, sessionId: this.sessionId, ...extra });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * Browser microphone capture through capture-worklet.js: 16 kHz mono int16 frames, resampled in the
 * audio thread. Events: `format` ({inputRate, outputRate, frameSamples}), `frame` ({pcm: ArrayBuffer, rms}).
 */
export class Microphone extends EventTarget {
  /**
   * @param {{frameMs?: number, workletUrl?: string|URL}} [options]
   * @returns {Promise<Microphone>}
   */
  static async open({ frameMs = 100, workletUrl = new URL("./capture-worklet.js", import.meta.url) } = {}) {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const microphone = new Microphone();
    try {
      const context = new AudioContext({ latencyHint: "interactive" });
      microphone.parts = { stream, context };
      await context.audioWorklet.addModule(workletUrl);
      const source = context.createMediaStreamSource(stream);
      const node = new AudioWorkletNode(context, "malsori-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { frameMs },
      });
      node.port.onmessage = ({ data }) => {
        if (data.type === "format") microphone.dispatchEvent(new CustomEvent("format", { detail: data }));
        else if (data.type === "frame") microphone.dispatchEvent(new CustomEvent("frame", { detail: { pcm: data.pcm, rms: data.rms } }));
      };
      source.connect(node);
      // The worklet writes no output; connecting it keeps the graph pulling it in every browser.
      node.connect(context.destination);
      if (context.state === "suspended") await context.resume();
      Object.assign(microphone.parts, { source, node });
    } catch (err) {
      microphone.close();
      throw err;
    }
    return microphone;
  }

  close() {
    if (!this.parts) return;
    const { stream, context, source, node } = this.parts;
    this.parts = null;
    if (node) {
      node.port.onmessage = null;
      node.disconnect();
    }
    if (source) source.disconnect();
    for (const track of stream.getTracks()) track.stop();
    context.close();
  }
}

/** Float samples in [-1, 1] as int16 (pcm_s16le), clipped. */
export function floatToInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = Math.round(Math.max(-1, Math.min(1, samples[i])) * 32767);
  return out;
}

export function countWords(text) {
  const trimmed = (text || "").trim();
  return trimmed ? trimmed.split(/\s+/u).length : 0;
}

function defaultUrl() {
  if (typeof location === "undefined") throw new MalsoriError("give the server's url: {url: 'ws://host:port/v1/stream'}", { code: "invalid_options" });
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/stream`;
}

function toArrayBuffer(pcm) {
  if (pcm instanceof ArrayBuffer) return pcm;
  if (ArrayBuffer.isView(pcm)) return pcm.buffer.slice(pcm.byteOffset, pcm.byteOffset + pcm.byteLength);
  throw new MalsoriError("audio must be an ArrayBuffer or a typed array", { code: "invalid_options" });
}
