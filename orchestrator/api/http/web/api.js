// The REST API from the browser: one request helper that turns the server's error body
// ({"error": {"code", "message", "field"?}}) into an ApiError, shared by the call page and the builder.

export class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

// request("POST", "/v1/personas", {token, json}) → the parsed answer (null for 204).
// `form` (a FormData) is sent as multipart; `json` as application/json.
export async function request(method, path, { token, json, form, signal } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form; // the browser sets the multipart boundary
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", `the server could not be reached (${err.message})`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const e = data && data.error;
    if (e && typeof e.message === "string") throw new ApiError(res.status, e.code || "error", e.message, e.field || null);
    throw new ApiError(res.status, `http_${res.status}`, text.trim().slice(0, 200) || res.statusText || "request failed");
  }
  return data;
}

// Every item of a cursor-paged list ({data, next_cursor}), up to maxPages pages.
export async function listAll(path, token, { limit = 100, maxPages = 50 } = {}) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < maxPages; page++) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (cursor) q.set("cursor", cursor);
    const answer = await request("GET", `${path}?${q}`, { token });
    items.push(...(answer.data || []));
    cursor = answer.next_cursor;
    if (!cursor) break;
  }
  return items;
}
