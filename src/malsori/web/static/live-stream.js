// The browser side of the /v1/stream protocol (docs/protocol.md): microphone → AudioWorklet
// (16 kHz mono int16 frames) → binary WebSocket frames; typed JSON events back.
//
// Resume: a dropped connection is not the end of a session. The server keeps it for a grace period,
// so the client reconnects with session_id, resume_token and last_seq; the server replays the events
// after last_seq, and events are deduplicated here by seq. The last BUFFER_LIMIT_S of captured audio
// is kept: the resumed `ready` says how many samples really arrived (`received_samples`), and the
// client resends from there, so audio in flight at the drop and audio captured while disconnected
// are transcribed exactly once.

export const SAMPLE_RATE = 16000;
const FRAME_MS = 100;
const BUFFER_LIMIT_S = 30;
const BACKOFF_MS = [250, 500, 1000, 2000, 3000, 5000];
// Close codes after which retrying cannot help: the server refused the session or the data.
const FINAL_CLOSE_CODES = new Set([1003, 1007, 1008, 1009, 1013]);

export class LiveStream extends EventTarget {
  /**
   * @param {{url?: string, language?: string, task?: string, preset?: string, graceSeconds?: number}} options
   */
  constructor(options = {}) {
    super();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = options.url || `${scheme}//${location.host}/v1/stream`;
    this.options = { language: options.language || null, task: options.task || "transcribe", preset: options.preset || null };
    this.graceMs = (options.graceSeconds || 30) * 1000;
    this.state = "idle";
    this.ws = null;
    this.ready = false;
    this.sessionId = null;
    this.resumeToken = null;
    this.lastSeq = null;
    this.resumes = 0;
    this.stopping = false;
    this.finished = false;
    this.dropStartedAt = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.history = []; // recent frames: {offset (capture count of the first sample), pcm (ArrayBuffer)}
    this.capturedSamples = 0; // samples the worklet has produced
    this.sentSamples = 0; // capture count up to which the server has the audio
    this.streamBase = null; // capture count of the session's first sample (its stream time 0)
    this.droppedSamples = 0; // audio lost because a reconnect outlasted the buffer
    this.timeline = []; // [capture seconds at the end of a frame, performance.now() when captured]
    this.finals = new Map(); // seq -> final event
    this.audio = null;
    this.lastError = null; // message of the last fatal `error` event
  }

  // -- public ----------------------------------------------------------------------------------
  async start() {
    this.setState("connecting", "Opening the microphone…");
    try {
      await this.openMicrophone();
    } catch (err) {
      this.fail(`Microphone unavailable: ${err.message || err}`);
      throw err;
    }
    this.connect();
  }

  /** Stop capturing, send what is left, ask the server to finish, wait for its `end` event. */
  async stop() {
    if (this.stopping || this.state === "idle") return;
    this.stopping = true;
    this.closeMicrophone();
    this.setState("stopping", "Finishing the last words…");
    if (this.ready) this.sendStop();
    await new Promise((resolve) => {
      if (this.finished || this.state === "error") return resolve();
      const done = () => resolve();
      this.addEventListener("end", done, { once: true });
      this.addEventListener("fatal", done, { once: true });
      setTimeout(done, 60000); // the server owes us `end`; do not hang the page if it never comes
    });
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.ws = null; // closed on purpose: onClose must not reconnect
    if (ws) ws.close(1000, "done");
    if (this.state === "error") return;
    if (this.finished) this.setState("stopped", "Stopped");
    else this.setState("stopped", "Stopped (the server did not confirm the last words)");
  }

  /** Test hook and "simulate a network drop": close the socket without a stop message. */
  dropConnection() {
    if (this.ws) this.ws.close(4000, "connection dropped by the client");
  }

  figures() {
    let words = 0;
    for (const final of this.finals.values()) words += countWords(final.text);
    return {
      audioSentSeconds: (this.sentSamples - (this.streamBase || 0)) / SAMPLE_RATE,
      audioDroppedSeconds: this.droppedSamples / SAMPLE_RATE,
      words,
      finals: this.finals.size,
    };
  }

  // -- microphone ------------------------------------------------------------------------------
  async openMicrophone() {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const context = new AudioContext({ latencyHint: "interactive" });
    await context.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "malsori-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { frameMs: FRAME_MS },
    });
    node.port.onmessage = (event) => this.onWorkletMessage(event.data);
    source.connect(node);
    // The worklet writes no output; connecting it keeps the graph pulling it in every browser.
    node.connect(context.destination);
    if (context.state === "suspended") await context.resume();
    this.audio = { stream, context, source, node };
  }

  closeMicrophone() {
    if (!this.audio) return;
    const { stream, context, source, node } = this.audio;
    node.port.onmessage = null;
    source.disconnect();
    node.disconnect();
    for (const track of stream.getTracks()) track.stop();
    context.close();
    this.audio = null;
  }

  onWorkletMessage(message) {
    if (message.type === "format") {
      this.emit("format", message);
      return;
    }
    if (message.type !== "frame") return;
    const now = performance.now();
    this.history.push({ offset: this.capturedSamples, pcm: message.pcm });
    this.capturedSamples += message.pcm.byteLength / 2;
    this.timeline.push([this.capturedSamples / SAMPLE_RATE, now]);
    if (this.timeline.length > 3000) this.timeline.splice(0, 1000); // keep ~5 min of frames
    while (this.history.length && this.capturedSamples - this.history[0].offset > BUFFER_LIMIT_S * SAMPLE_RATE) {
      this.history.shift();
    }
    this.emit("level", { rms: message.rms });
    if (this.ready) this.flush();
  }

  /** Send every captured sample the server does not have yet (from `sentSamples` on). */
  flush() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const oldest = this.history.length ? this.history[0].offset : this.capturedSamples;
    if (this.streamBase === null) this.streamBase = this.sentSamples = oldest;
    if (this.sentSamples < oldest) {
      this.droppedSamples += oldest - this.sentSamples;
      this.sentSamples = oldest;
    }
    for (const frame of this.history) {
      const samples = frame.pcm.byteLength / 2;
      if (frame.offset + samples <= this.sentSamples) continue;
      const skip = this.sentSamples - frame.offset; // > 0 only when the server got part of a frame
      this.ws.send(skip > 0 ? frame.pcm.slice(skip * 2) : frame.pcm);
      this.sentSamples = frame.offset + samples;
    }
    this.emit("figures", this.figures());
  }

  // -- the socket ------------------------------------------------------------------------------
  connect() {
    const resuming = this.sessionId !== null;
    if (!resuming && this.attempt === 0) this.setState("connecting", "Connecting to the server…");
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.ready = false;
    ws.onopen = () => {
      const start = { type: "start", sample_rate: SAMPLE_RATE, encoding: "pcm_s16le", task: this.options.task };
      if (this.options.language) start.language = this.options.language;
      if (this.options.preset) start.preset = this.options.preset;
      if (resuming) {
        start.session_id = this.sessionId;
        start.resume_token = this.resumeToken;
        if (this.lastSeq !== null) start.last_seq = this.lastSeq;
      }
      ws.send(JSON.stringify(start));
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onEvent(message);
    };
    ws.onclose = (event) => this.onClose(ws, event);
  }

  onEvent(message) {
    if (message.type === "ready") {
      // A resumed session answers with a fresh `ready`; it never counts as a replayed event.
      if (typeof message.seq === "number" && (this.lastSeq === null || message.seq > this.lastSeq)) this.lastSeq = message.seq;
      this.onReady(message);
      return;
    }
    if (typeof message.seq === "number") {
      // Replayed or repeated events after a resume: each seq is handled exactly once.
      if (this.lastSeq !== null && message.seq <= this.lastSeq) return;
      this.lastSeq = message.seq;
    }
    switch (message.type) {
      case "partial":
        this.emit("partial", message);
        break;
      case "final":
        this.onFinal(message);
        break;
      case "language":
        this.emit("language", message);
        break;
      case "error":
        if (message.fatal) this.lastError = message.message || message.code;
        this.emit("server-error", message);
        break;
      case "end":
        this.finished = true;
        if (message.reason && message.reason !== "stopped") {
          const why = { error: "the server failed", expired: "the session expired", shutdown: "the server shut down" };
          this.fail(this.lastError || `Session ended: ${why[message.reason] || message.reason}`);
        }
        this.emit("end", message);
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
      if (typeof message.received_samples === "number") this.sentSamples = this.streamBase + message.received_samples;
    }
    this.flush();
    if (this.stopping) {
      this.sendStop();
      return;
    }
    if (resumed) this.setState("resumed", `Resumed after a drop (${this.resumes}×) · live`);
    else this.setState("live", "Live");
    this.emit("ready", message);
  }

  onFinal(message) {
    if (this.finals.has(message.seq)) return;
    this.finals.set(message.seq, message);
    this.emit("final", { ...message, latencyMs: this.latencyOf(message.end) });
    this.emit("figures", this.figures());
  }

  /** Milliseconds from capturing the audio at stream time `end` to receiving its final text. */
  latencyOf(streamEnd) {
    if (typeof streamEnd !== "number") return null;
    const end = streamEnd + (this.streamBase || 0) / SAMPLE_RATE; // capture seconds
    let previous = [0, null];
    for (const entry of this.timeline) {
      if (entry[0] >= end) {
        // The frame ending at entry[0] was captured at entry[1]; step back to the instant of `end`.
        return Math.max(0, performance.now() - (entry[1] - (entry[0] - end) * 1000));
      }
      previous = entry;
    }
    return previous[1] === null ? null : Math.max(0, performance.now() - previous[1]);
  }

  sendStop() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "stop" }));
  }

  onClose(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.ready = false;
    if (this.finished) return;
    if (FINAL_CLOSE_CODES.has(event.code)) {
      this.fail(this.lastError || event.reason || `The server closed the connection (code ${event.code})`);
      return;
    }
    if (this.stopping && this.sessionId === null) {
      this.fail("The connection closed before the session started");
      return;
    }
    const now = performance.now();
    if (this.dropStartedAt === null) this.dropStartedAt = now;
    if (now - this.dropStartedAt > this.graceMs) {
      this.fail("Could not reconnect before the server gave the session up");
      return;
    }
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    const what = this.sessionId === null ? "Connecting" : "Connection lost; reconnecting";
    this.setState("reconnecting", `${what} (attempt ${this.attempt})…`);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  fail(reason) {
    clearTimeout(this.retryTimer);
    this.closeMicrophone();
    this.setState("error", reason);
    this.emit("fatal", { reason });
  }

  setState(state, label) {
    this.state = state;
    this.emit("state", { state, label });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

export function countWords(text) {
  const trimmed = (text || "").trim();
  return trimmed ? trimmed.split(/\s+/u).length : 0;
}
