// The control panel: polls GET /v1/admin/status every 2 s and shows what routing does in the
// server's own words. The routing toggle appears only when the status lists more than one engine
// (a single process has one model, so there is nothing to route between); it calls
// PUT /v1/admin/routing and shows the server's reason when it refuses (no GPU, wrong admin key).

import { apiKey, authHeaders, bindKeyField } from "./auth.js";

const POLL_MS = 2000;
const KEY_STORAGE = "malsori-admin-key";
const $ = (id) => document.getElementById(id);

let status = null;
let changing = false;

// Columns shown first when a session row has them; any other field follows.
const PREFERRED_COLUMNS = ["session_id", "state", "connected", "protocol", "language", "task", "preset", "audio_seconds", "finals", "backlog_seconds", "age_seconds"];

function errorMessage(body, fallback) {
  return (body && body.error && body.error.message) || fallback;
}

function formatDuration(seconds) {
  if (typeof seconds !== "number") return "–";
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

function ms(value) {
  return typeof value === "number" ? `${Math.round(value)} ms` : "–";
}

function cell(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(1);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function renderSessions(rows) {
  const table = $("sessions");
  const head = table.tHead.rows[0];
  const body = table.tBodies[0];
  $("sessions-count").textContent = `${rows.length} live`;
  if (!rows.length) {
    head.replaceChildren();
    const row = document.createElement("tr");
    const empty = document.createElement("td");
    empty.className = "empty";
    empty.textContent = "No live sessions";
    row.append(empty);
    body.replaceChildren(row);
    return;
  }
  const keys = new Set(rows.flatMap((row) => Object.keys(row)));
  const columns = [...PREFERRED_COLUMNS.filter((key) => keys.has(key)), ...[...keys].filter((key) => !PREFERRED_COLUMNS.includes(key))];
  head.replaceChildren(
    ...columns.map((key) => {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = key.replaceAll("_", " ");
      return th;
    }),
  );
  body.replaceChildren(
    ...rows.map((row) => {
      const tr = document.createElement("tr");
      for (const key of columns) {
        const td = document.createElement("td");
        td.textContent = cell(row[key]);
        if (key === "state") td.dataset.state = String(row[key]);
        tr.append(td);
      }
      return tr;
    }),
  );
}

function render(data) {
  status = data;
  const badge = $("server-state");
  badge.dataset.state = data.ready ? "live" : "connecting";
  badge.textContent = data.ready ? "Ready" : "Model loading";
  $("model").textContent = data.model;
  $("device").textContent = data.device;
  $("compute-type").textContent = data.compute_type;
  $("gpu").textContent = data.gpu_available ? `${data.gpu_count} CUDA device${data.gpu_count === 1 ? "" : "s"}` : "none present";
  $("uptime").textContent = formatDuration(data.uptime_s);
  $("routing").textContent = data.routing || "–";
  $("routing-card").hidden = (data.engines || []).length < 2;
  $("admin-key-box").hidden = !data.admin_key_required;
  $("api-key-box").hidden = !data.api_keys_required;
  if (!changing) {
    const radio = $(`mode-${data.routing_mode}`);
    if (radio) radio.checked = true;
  }
  const pending = (data.queue && data.queue.pending) || {};
  $("queue-depth").textContent = cell(data.queue ? data.queue.depth : null);
  $("queue-split").textContent = `${pending.live ?? 0} / ${pending.request ?? 0} / ${pending.job ?? 0}`;
  const latency = data.latency || {};
  $("wait-p50").textContent = ms(latency.wait_ms_p50);
  $("decode-p50").textContent = ms(latency.decode_ms_p50);
  $("busy").textContent = typeof latency.busy_fraction === "number" ? `${Math.round(latency.busy_fraction * 100)}%` : "–";
  $("batch").textContent = cell(latency.mean_batch_size);
  renderSessions(data.sessions || []);
  $("updated").textContent = `Updated ${new Date().toLocaleTimeString()} · refreshes every ${POLL_MS / 1000} s`;
}

async function poll() {
  try {
    const response = await fetch("/v1/admin/status", { cache: "no-store", headers: authHeaders() });
    const body = await response.json();
    if (response.status === 401 || response.status === 403) {
      $("api-key-box").hidden = false; // the server has keys: ask for one
      throw new Error(`${errorMessage(body, "an API key is needed")}${apiKey() ? "" : " (enter an API key above)"}`);
    }
    if (!response.ok) throw new Error(errorMessage(body, `the server answered ${response.status}`));
    $("poll-error").hidden = true;
    render(body);
  } catch (err) {
    const box = $("poll-error");
    box.textContent = `Cannot reach the server: ${err.message}`;
    box.hidden = false;
    $("server-state").dataset.state = "error";
    $("server-state").textContent = "Unreachable";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function showRoutingMessage(text, kind) {
  const box = $("routing-message");
  box.textContent = text;
  box.className = `notice ${kind}`;
  box.hidden = false;
}

async function changeRouting(mode) {
  changing = true;
  const key = $("admin-key").value;
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  const headers = authHeaders({ "Content-Type": "application/json" });
  if (key) headers["X-Admin-Key"] = key;
  try {
    const response = await fetch("/v1/admin/routing", { method: "PUT", headers, body: JSON.stringify({ mode }) });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const reason = errorMessage(body, `the server answered ${response.status}`);
      showRoutingMessage(`Not changed: ${reason}`, "bad");
      if (response.status === 401) $("admin-key-box").hidden = false;
      const previous = status ? $(`mode-${status.routing_mode}`) : null;
      if (previous) previous.checked = true; // the toggle shows what is really in force
      return;
    }
    if (status) status.routing_mode = body.routing_mode;
    $("routing").textContent = body.routing;
    // The server's own words say what the mode changes (nothing while one engine does all the work).
    showRoutingMessage(`Routing mode set to ${body.routing_mode.toUpperCase()}. ${body.routing}`, "ok");
  } catch (err) {
    showRoutingMessage(`Not changed: ${err.message}`, "bad");
  } finally {
    changing = false;
  }
}

$("admin-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
bindKeyField($("api-key"));
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => {
    if (radio.checked) changeRouting(radio.value);
  });
}
$("routing-form").addEventListener("submit", (event) => event.preventDefault());
poll();
