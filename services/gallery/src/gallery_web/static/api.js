// Calls to the Gallery's own origin: /api/{service}/... and /api/gallery/..., with the session's token.
// The token lives in sessionStorage only ("gallery.token"): it is gone when the browser session ends.

const TOKEN_KEY = "gallery.token";
const TIMEOUT_MS = 30000;

/** An answer that was not 2xx, with the message the service gave (`{"error": ...}`). */
export class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.status = status;
    this.path = path;
  }

  get unauthorized() {
    return this.status === 401;
  }

  get forbidden() {
    return this.status === 403;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The message in an error body: `{"error": ...}` from the services, `{"detail": ...}` from validation. */
function messageOf(body, status) {
  if (body && typeof body === "object") {
    if (typeof body.error === "string") return body.error;
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).slice(1).join(".") || "body"}: ${d.msg}`).join("; ");
    }
  }
  if (typeof body === "string" && body.trim()) return body.trim().slice(0, 300);
  return `HTTP ${status}`;
}

/**
 * Call `path` on this origin. options: {method, body (JSON-encoded unless a string), as: "json"|"text"|"blob"}.
 * Resolves to the parsed answer; rejects with ApiError (status 0 when the server could not be reached).
 * A 401 also raises the "gallery:unauthorized" event on window, so the shell asks for a token (not with
 * `quiet: true`: a look the shell takes on its own, which must not prompt).
 */
export async function api(path, options = {}) {
  const { method = "GET", body, as = "json", quiet = false } = options;
  const headers = { Accept: as === "json" ? "application/json" : "*/*" };
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  let payload;
  if (body !== undefined) {
    payload = typeof body === "string" ? body : JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, signal: controller.signal, cache: "no-store" });
  } catch (err) {
    const why = err.name === "AbortError" ? `no answer in ${TIMEOUT_MS / 1000} s` : "the Gallery is unreachable";
    throw new ApiError(0, why, path);
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) {
    const text = await response.text();
    let parsed = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    const error = new ApiError(response.status, messageOf(parsed, response.status), path);
    if (error.unauthorized && !quiet) window.dispatchEvent(new CustomEvent("gallery:unauthorized", { detail: error }));
    throw error;
  }
  if (as === "text") return response.text();
  if (as === "blob") return response.blob();
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** Like api(), but null for a 404 instead of an error (a section that simply has nothing yet). */
export async function maybe(path, options) {
  try {
    return await api(path, options);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

/** Fetch `path` with the token and hand it to the browser as a file download named `filename`. */
export async function download(path, filename) {
  const blob = await api(path, { as: "blob" });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.dataset.external = "";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Paths on this origin for each service behind the Gallery's proxy. */
export const registry = (path) => `/api/registry/api/v1${path}`;
export const trainer = (path) => `/api/trainer/api/v1${path}`;
export const optimizer = (path) => `/api/optimizer/api/v1${path}`;
export const deployer = (path) => `/api/deployer/api/v1${path}`;
export const gateway = (path) => `/api/gateway${path}`;
export const monitor = (path) => `/api/monitor/api/v1${path}`;
export const gallery = (path) => `/api/gallery${path}`;
