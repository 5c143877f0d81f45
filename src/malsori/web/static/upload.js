// File upload as a job: send the file to POST /v1/jobs with upload progress, then follow the job's
// own progress (GET /v1/jobs/{id}) until its transcript is ready, and offer TXT/SRT/VTT downloads
// from GET /v1/jobs/{id}/result?format=...: the formats come from the API, never re-rendered here, and
// the file is transcribed once whatever is downloaded. Long files work the same way as short ones.
import { authHeaders } from "./auth.js";
import { finalItem } from "./format.js";

const POLL_MS = 500;
const $ = (id) => document.getElementById(id);

let current = null; // {job, file}
let cancelled = false;

/** Message of a `{"error": {"code", "message"}}` body, or the status line. */
function errorMessage(status, body) {
  try {
    const parsed = typeof body === "string" ? JSON.parse(body) : body;
    if (parsed && parsed.error && parsed.error.message) return parsed.error.message;
  } catch {
    // not JSON: fall through
  }
  return `the server answered ${status}`;
}

function showError(message) {
  $("upload-error").textContent = message || "";
  $("upload-error").hidden = !message;
}

function setPhase(label, fraction) {
  const bar = $("upload-progress");
  $("upload-progress-box").hidden = label === null;
  if (label === null) return;
  $("upload-phase").textContent = label;
  if (fraction === null) bar.removeAttribute("value"); // indeterminate
  else bar.value = Math.round(fraction * 100);
}

function submit(file, options) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("task", options.task);
    if (options.language) form.append("language", options.language);
    if (options.diarize) form.append("diarize", "true");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/jobs");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) {
        const fraction = event.loaded / event.total;
        setPhase(`Uploading ${file.name}… ${Math.round(fraction * 100)}%`, fraction);
      }
    };
    xhr.upload.onload = () => setPhase("Uploaded; waiting for the server…", null);
    xhr.onerror = () => reject(new Error("the upload failed (network error)"));
    xhr.onload = () => {
      if (xhr.status === 202 || xhr.status === 200) resolve(JSON.parse(xhr.responseText));
      else reject(new Error(errorMessage(xhr.status, xhr.responseText)));
    };
    setPhase(`Uploading ${file.name}… 0%`, 0);
    xhr.send(form);
  });
}

async function follow(job) {
  for (;;) {
    if (cancelled) throw new Error("cancelled");
    const response = await fetch(job.links.self, { cache: "no-store", headers: authHeaders() });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error(errorMessage(response.status, body));
    job = body;
    if (job.state === "succeeded") return job;
    if (job.state === "failed") throw new Error(job.error ? job.error.message : "the job failed");
    if (job.state === "cancelled") throw new Error("cancelled");
    const audio = typeof job.audio_seconds === "number" ? ` of ${job.audio_seconds.toFixed(1)} s` : "";
    if (job.state === "queued") setPhase("Queued behind other work…", null);
    else setPhase(`Transcribing${audio}… ${Math.round(job.progress * 100)}%`, job.progress);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function showTranscript(job) {
  const result = job.result || {};
  const segments = result.segments || [];
  $("upload-segments").replaceChildren(...segments.map((segment, index) => finalItem({ ...segment, seq: index })));
  const duration = typeof result.duration === "number" ? ` · ${result.duration.toFixed(1)} s of audio` : "";
  const language = result.language ? ` · language ${result.language}` : "";
  $("upload-status").textContent = `Done: ${segments.length} segment${segments.length === 1 ? "" : "s"}${duration}${language}.`;
  $("upload-result").hidden = false;
}

async function transcribe(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  showError("");
  cancelled = false;
  current = null;
  $("upload-result").hidden = true;
  $("upload-status").textContent = "";
  $("upload-button").disabled = true;
  $("upload-cancel").hidden = false;
  try {
    const job = await submit(file, { language: $("language").value, task: $("task").value, diarize: $("speakers").checked });
    current = { job, file };
    const done = await follow(job);
    current.job = done;
    showTranscript(done);
  } catch (err) {
    if (err.message === "cancelled") $("upload-status").textContent = `Cancelled ${file.name}.`;
    else showError(`Could not transcribe ${file.name}: ${err.message}`);
  } finally {
    setPhase(null);
    $("upload-button").disabled = false;
    $("upload-cancel").hidden = true;
  }
}

async function cancel() {
  cancelled = true;
  if (current && current.job) await fetch(current.job.links.self, { method: "DELETE", headers: authHeaders() }).catch(() => null);
}

async function download(button) {
  if (!current || !current.job || current.job.state !== "succeeded") return;
  const { format, ext } = button.dataset;
  showError("");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(`${current.job.links.result}?format=${encodeURIComponent(format)}`, { headers: authHeaders() });
    if (!response.ok) throw new Error(errorMessage(response.status, await response.text()));
    const blob = await response.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${current.file.name.replace(/\.[^.]+$/u, "")}.${ext}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (err) {
    showError(`Download failed: ${err.message}`);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

$("upload-form").addEventListener("submit", transcribe);
$("upload-cancel").addEventListener("click", cancel);
for (const button of document.querySelectorAll(".downloads button")) {
  button.addEventListener("click", () => download(button));
}
