// The JSON API (docs/protocol.md): session cookie for auth, X-CSRFToken on writes, and errors
// turned into ApiError with the server's code and human message.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function goToLogin() {
  const login = document.body.dataset.loginUrl || "/accounts/login/";
  const next = location.pathname + location.search;
  location.assign(`${login}?next=${encodeURIComponent(next)}`);
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (match) return decodeURIComponent(match[1]);
  // The logout form carries the token too (the cookie may be absent on a first visit).
  return document.querySelector("input[name=csrfmiddlewaretoken]")?.value ?? "";
}

// `body` is sent as JSON, or as multipart when it is FormData (uploads); the browser then sets
// the Content-Type with its boundary itself.
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const multipart = body instanceof FormData;
  if (body !== undefined && !multipart) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined || multipart ? body : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "network", "The server could not be reached. Check your connection.");
  }
  if (response.status === 401) {
    goToLogin();
    throw new ApiError(401, "unauthenticated", "Your session ended; log in again.");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // Not JSON (a proxy's error page, say): reported below by status.
  }
  if (!response.ok) {
    const error = data?.error ?? {};
    throw new ApiError(
      response.status,
      error.code ?? `http_${response.status}`,
      error.message ?? `The server answered with an error (${response.status}). Try again.`,
    );
  }
  return data;
}

export const listModels = () => api("/api/models");
export const getMe = () => api("/api/me");
export const updateMe = (changes) => api("/api/me", { method: "PATCH", body: changes });

export function listConversations({ page = 1, q = "" } = {}) {
  const params = new URLSearchParams({ page: String(page) });
  if (q) params.set("q", q);
  return api(`/api/conversations?${params}`);
}

export const getConversation = (id) => api(`/api/conversations/${id}`);
export const updateConversation = (id, changes) =>
  api(`/api/conversations/${id}`, { method: "PATCH", body: changes });
export const deleteConversation = (id) => api(`/api/conversations/${id}`, { method: "DELETE" });

function form(name, file) {
  const data = new FormData();
  data.append(name, file, file.name || name);
  return data;
}

export const uploadImage = (file) =>
  api("/api/images", { method: "POST", body: form("image", file) });
export const showVersion = (messageId) =>
  api(`/api/messages/${messageId}/show`, { method: "POST" });

export const exportUrl = (id, format) => `/api/conversations/${id}/export.${format}`;
export const importConversations = (file) =>
  api("/api/import", { method: "POST", body: form("file", file) });

export const listShares = (id) => api(`/api/conversations/${id}/shares`);
export const createShare = (id, options) =>
  api(`/api/conversations/${id}/shares`, { method: "POST", body: options });
export const revokeShare = (token) =>
  api(`/api/shares/${encodeURIComponent(token)}`, { method: "DELETE" });

export const listPresets = () => api("/api/presets");
export const createPreset = (preset) => api("/api/presets", { method: "POST", body: preset });
export const updatePreset = (id, changes) =>
  api(`/api/presets/${id}`, { method: "PATCH", body: changes });
export const deletePreset = (id) => api(`/api/presets/${id}`, { method: "DELETE" });
