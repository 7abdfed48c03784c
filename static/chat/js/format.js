// Display helpers. Money arrives as decimal strings and is shown as given, trimmed of trailing
// zeros: it never goes through a float, so nothing is rounded or shown as 0.30000000000000004.

const PLAIN_DECIMAL = /^-?\d+(\.\d+)?$/;

export function trimDecimal(value) {
  if (value === null || value === undefined) return null;
  const text = String(value).trim();
  if (!PLAIN_DECIMAL.test(text) || !text.includes(".")) return text;
  return text.replace(/0+$/, "").replace(/\.$/, "");
}

export function usd(value) {
  const text = trimDecimal(value);
  return text === null ? null : `$${text}`;
}

const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 0 });
const whole = new Intl.NumberFormat("en");

export const compactNumber = (n) => compact.format(n);
export const wholeNumber = (n) => whole.format(n);

export function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  const seconds = ms / 1000;
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

// A refused frame or a failed call as a sentence for the person at the keyboard. The server's
// messages are already written for people; these cover the codes it may send without one.
const FALLBACK = {
  budget_exceeded: "This reply could pass your monthly spending limit.",
  rate_limited: "You are sending messages too quickly. Wait a moment and try again.",
  not_configured: "This server is not connected to a model provider yet.",
  model_unavailable: "That model is not available any more. Pick another one.",
  content_too_long: "The message is too long.",
  too_many_generations: "Too many replies are being written at once. Wait for one to finish.",
  conflict: "Stop the reply that is still being written first.",
  not_found: "That conversation or message no longer exists.",
  invalid_frame: "The server could not read that request.",
};

export function describeError(code, message) {
  return message || FALLBACK[code] || "Something went wrong. Try again.";
}
