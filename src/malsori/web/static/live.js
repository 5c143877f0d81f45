// The live page: options, start/stop, captions, figures and the connection state, over the
// JavaScript client (malsori-client.js), which speaks /v1/stream, resumes and captures the microphone.
import { bindKeyField, socketToken } from "./auth.js";
import { MalsoriStream } from "./malsori-client.js";
import { finalItem, languageLabel } from "./format.js";
import { StatsView } from "./stats-view.js";

const $ = (id) => document.getElementById(id);
let stream = null;
const optionControls = ["language", "task", "preset", "speakers", "meeting"].map($);
const statsView = new StatsView($);

function showError(message) {
  const box = $("live-error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setRunning(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  for (const control of optionControls) control.disabled = running;
}

function showState(state, label) {
  const badge = $("conn-state");
  badge.dataset.state = state;
  badge.textContent = label;
}

/** The words the badge shows for each state of the client. */
function stateLabel(detail) {
  switch (detail.state) {
    case "connecting":
      return "Connecting to the server…";
    case "live":
      return "Live";
    case "resumed":
      return `Resumed after a drop (${detail.resumes}×) · live`;
    case "reconnecting":
      return detail.sessionId === null
        ? `Connecting (attempt ${detail.attempt})…`
        : `Connection lost; reconnecting (attempt ${detail.attempt})…`;
    case "stopping":
      return "Finishing the last words…";
    case "stopped":
      return detail.confirmed ? "Stopped" : "Stopped (the server did not confirm the last words)";
    case "error":
      return detail.error.message;
    default:
      return detail.state;
  }
}

function onState({ detail }) {
  const label = stateLabel(detail);
  showState(detail.state, label);
  if (detail.state === "error") {
    showError(label);
    setRunning(false);
  }
  if (detail.state === "stopped") setRunning(false);
}

function onFinal({ detail }) {
  const list = $("finals");
  const box = $("transcript");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  $("live-placeholder").hidden = true;
  list.append(finalItem(detail));
  $("partial").textContent = "";
  if (detail.latencyMs !== null && detail.latencyMs !== undefined) {
    $("fig-latency").textContent = `${(detail.latencyMs / 1000).toFixed(2)} s`;
  }
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function onFigures({ detail }) {
  $("fig-audio").textContent = `${detail.audioSentSeconds.toFixed(1)} s`;
  $("fig-words").textContent = String(detail.words);
}

async function start() {
  showError("");
  $("finals").replaceChildren();
  $("partial").textContent = "";
  $("fig-latency").textContent = "–";
  $("fig-language").textContent = "–";
  const meetingId = $("meeting").value.trim() || null;
  statsView.reset(meetingId);
  setRunning(true);
  stream = new MalsoriStream({
    language: $("language").value,
    task: $("task").value,
    preset: $("preset").value,
    options: $("speakers").checked ? { diarize: true } : null, // finals then carry `speaker`
    token: socketToken,
    stats: true,
    meetingId,
  });
  stream.addEventListener("state", onState);
  stream.addEventListener("final", onFinal);
  stream.addEventListener("figures", onFigures);
  stream.addEventListener("stats", ({ detail }) => statsView.show(detail));
  stream.addEventListener("partial", ({ detail }) => {
    $("live-placeholder").hidden = true;
    $("partial").textContent = (detail.text || "").trim();
  });
  stream.addEventListener("ready", () => {
    const fixed = $("language").value;
    if (fixed) $("fig-language").textContent = `${languageLabel(fixed)} · chosen`;
  });
  stream.addEventListener("language", ({ detail }) => {
    const probability = typeof detail.probability === "number" ? ` · ${Math.round(detail.probability * 100)}%` : "";
    $("fig-language").textContent = languageLabel(detail.language) + probability;
  });
  stream.addEventListener("level", ({ detail }) => {
    $("level").value = Math.min(1, detail.rms * 4);
  });
  stream.addEventListener("error", ({ detail }) => showError(detail.message || detail.code || "server error"));

  showState("connecting", "Opening the microphone…");
  try {
    await stream.startMicrophone();
  } catch (err) {
    const message = `Microphone unavailable: ${err.message || err}`;
    showState("error", message);
    showError(message);
    setRunning(false);
    stream = null;
    return;
  }
  // Progress and failures show through the state events; the promise's outcome is in them too.
  stream.connect().catch(() => {});
}

async function stop() {
  if (!stream) return;
  $("stop").disabled = true;
  try {
    await stream.stop();
  } catch {
    // the error state (and the server's reason) is already on the page
  }
  $("level").value = 0;
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);

// For tests and for trying resume by hand from the console.
window.malsori = {
  get stream() {
    return stream;
  },
  state: () => (stream ? stream.state : "idle"),
  dropConnection: () => stream && stream.dropConnection(),
  finals: () => (stream ? [...stream.finals] : []),
  stats: () => (stream ? stream.lastStats : null),
  statsUpdates: () => statsView.count,
  stop,
};
bindKeyField($("api-key"));
