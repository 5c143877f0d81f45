// The API key of this tab, for servers that have keys (docs/security.md). A person pastes it into the
// page's "API key" field; it is kept in sessionStorage (gone when the tab closes, never sent anywhere
// but this server) and sent as `Authorization: Bearer`. Sockets cannot carry that header, so the live
// page asks POST /v1/tokens for a short-lived token before each connection and sends it first.
const STORAGE = "malsori-api-key";

export function apiKey() {
  return sessionStorage.getItem(STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(STORAGE, key);
  else sessionStorage.removeItem(STORAGE);
}

/** `headers` plus the Authorization header when a key was given. */
export function authHeaders(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

/** A socket token (null when no key was given or the server needs none); throws with the server's reason. */
export async function socketToken() {
  if (!apiKey()) return null;
  const response = await fetch("/v1/tokens", { method: "POST", headers: authHeaders() });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.error && body.error.message) || `the server answered ${response.status}`);
  return body.token;
}

/** Fill `input` with the stored key and store what is typed into it. */
export function bindKeyField(input) {
  input.value = apiKey();
  input.addEventListener("change", () => setApiKey(input.value.trim()));
}
