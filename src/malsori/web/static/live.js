// The live page: options, start/stop, captions, figures and the connection state, over LiveStream.
import { LiveStream } from "./live-stream.js";
import { finalItem, languageLabel } from "./format.js";

const $ = (id) => document.getElementById(id);
let stream = null;
const optionControls = ["language", "task", "preset"].map($);

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

function onState({ detail }) {
  const badge = $("conn-state");
  badge.dataset.state = detail.state;
  badge.textContent = detail.label;
  if (detail.state === "error") {
    showError(detail.label);
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
  setRunning(true);
  stream = new LiveStream({ language: $("language").value, task: $("task").value, preset: $("preset").value });
  stream.addEventListener("state", onState);
  stream.addEventListener("final", onFinal);
  stream.addEventListener("figures", onFigures);
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
  stream.addEventListener("server-error", ({ detail }) => showError(detail.message || detail.code || "server error"));
  try {
    await stream.start();
  } catch {
    setRunning(false);
  }
}

async function stop() {
  if (!stream) return;
  $("stop").disabled = true;
  await stream.stop();
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
  finals: () => (stream ? [...stream.finals.values()] : []),
  stop,
};
