// File upload: send the file with upload progress, show the transcript, offer TXT/SRT/VTT downloads.
// The download formats come from the API (response_format), never re-rendered here, so they match
// what every other client of the service gets.
import { finalItem } from "./format.js";

const $ = (id) => document.getElementById(id);

let current = null; // {file, options, downloads: Map(format -> Blob)}

function endpoint(task) {
  return task === "translate" ? "/v1/audio/translations" : "/v1/audio/transcriptions";
}

function formFor(file, options, format) {
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("response_format", format);
  if (options.language && options.task !== "translate") form.append("language", options.language);
  return form;
}

/** Message of a `{"error": {"code", "message"}}` body, or the status line. */
function errorMessage(status, body) {
  try {
    const parsed = JSON.parse(body);
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

function setPhase(label, percent) {
  const bar = $("upload-progress");
  $("upload-progress-box").hidden = label === null;
  if (label === null) return;
  $("upload-phase").textContent = label;
  if (percent === null) bar.removeAttribute("value"); // indeterminate while the server works
  else bar.value = percent;
}

function send(file, options) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", endpoint(options.task));
    xhr.responseType = "text";
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) setPhase(`Uploading… ${Math.round((event.loaded / event.total) * 100)}%`, (event.loaded / event.total) * 100);
    };
    xhr.upload.onload = () => setPhase("Transcribing…", null);
    xhr.onerror = () => reject(new Error("the upload failed (network error)"));
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText));
      else reject(new Error(errorMessage(xhr.status, xhr.responseText)));
    };
    setPhase("Uploading… 0%", 0);
    xhr.send(formFor(file, options, "verbose_json"));
  });
}

function showTranscript(result) {
  const list = $("upload-segments");
  list.replaceChildren(...(result.segments || []).map((segment, index) => finalItem({ ...segment, seq: index })));
  const language = result.language ? ` · language ${result.language}` : "";
  const duration = typeof result.duration === "number" ? ` · ${result.duration.toFixed(1)} s of audio` : "";
  $("upload-status").textContent = `Done: ${(result.segments || []).length} segments${duration}${language}.`;
  $("upload-result").hidden = false;
}

async function transcribe(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  showError("");
  $("upload-result").hidden = true;
  $("upload-status").textContent = "";
  $("upload-button").disabled = true;
  const options = { language: $("language").value, task: $("task").value };
  try {
    const result = await send(file, options);
    current = { file, options, downloads: new Map() };
    showTranscript(result);
  } catch (err) {
    showError(`Could not transcribe ${file.name}: ${err.message}`);
  } finally {
    setPhase(null);
    $("upload-button").disabled = false;
  }
}

async function download(button) {
  if (!current) return;
  const { format, ext } = button.dataset;
  showError("");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    let blob = current.downloads.get(format);
    if (!blob) {
      const response = await fetch(endpoint(current.options.task), { method: "POST", body: formFor(current.file, current.options, format) });
      if (!response.ok) throw new Error(errorMessage(response.status, await response.text()));
      blob = await response.blob();
      current.downloads.set(format, blob);
    }
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
for (const button of document.querySelectorAll(".downloads button")) {
  button.addEventListener("click", () => download(button));
}
