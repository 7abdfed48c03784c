// The conversation's messages as DOM. Each message keeps its state in a plain object; paint()
// brings its element up to date. Model text goes through renderMarkdown (sanitised); a user's
// own text is shown as text, never parsed as HTML.

import { renderMarkdown } from "./markdown.js";
import { duration, usd, wholeNumber } from "./format.js";

const STATUS_LABELS = {
  stopped: "Stopped",
  interrupted: "Interrupted",
  error: "Failed",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

export function actionButton(action, label, iconName) {
  const button = el("button", "action");
  button.type = "button";
  button.dataset.action = action;
  if (iconName) button.append(icon(iconName));
  button.append(el("span", "action-label", label));
  return button;
}

// "‹ 2/3 ›": flips between the versions stored at a message's place (regenerated replies,
// edited questions). Hidden while there is only one.
function versionControl() {
  const group = el("div", "versions");
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", "Versions");
  group.hidden = true;
  const previous = actionButton("version-previous", "Previous version", "left");
  const next = actionButton("version-next", "Next version", "right");
  for (const button of [previous, next]) button.classList.add("version-step");
  group.append(previous, el("span", "version-label"), next);
  return group;
}

function paintVersions(node, message, { busy }) {
  const group = node.querySelector(".versions");
  const versions = message.versions ?? [];
  const index = versions.indexOf(message.id);
  group.hidden = versions.length < 2 || index < 0;
  if (group.hidden) return;
  group.dataset.version = `${index + 1}/${versions.length}`;
  const label = group.querySelector(".version-label");
  label.textContent = `${index + 1}/${versions.length}`;
  label.setAttribute("aria-label", `Version ${index + 1} of ${versions.length}`);
  // While a reply streams the server refuses to switch (conflict): say so by disabling.
  group.querySelector("[data-action=version-previous]").disabled = busy || index === 0;
  group.querySelector("[data-action=version-next]").disabled =
    busy || index === versions.length - 1;
}

// Thumbnails of a question's images; a click shows one larger (see viewer.js).
function paintImages(node, message) {
  const images = message.images ?? [];
  const key = images.map((image) => image.url).join(" ");
  const holder = node.querySelector(".message-images");
  if (holder.dataset.key === key) return;
  holder.dataset.key = key;
  holder.hidden = images.length === 0;
  holder.replaceChildren(
    ...images.map((image, index) => {
      const button = el("button", "thumb");
      button.type = "button";
      button.dataset.action = "view-image";
      const alt = `Image ${index + 1} of ${images.length}`;
      button.setAttribute("aria-label", `${alt}: show larger`);
      const img = el("img");
      img.src = image.url;
      img.alt = alt;
      img.loading = "lazy";
      if (image.width && image.height) {
        img.width = image.width;
        img.height = image.height;
      }
      button.append(img);
      return button;
    }),
  );
}

export function userElement(message) {
  const node = el("article", "message user");
  node.dataset.role = "user";
  node.append(el("h3", "visually-hidden", "You said"));
  const bubble = el("div", "bubble");
  const images = el("div", "message-images");
  images.hidden = true;
  bubble.append(images, el("div", "user-text"));
  const actions = el("div", "actions");
  actions.append(actionButton("copy", "Copy", "copy"), actionButton("edit", "Edit", "edit"));
  // The versions stay in view; the other actions show on hover or focus.
  const foot = el("div", "message-foot");
  foot.append(versionControl(), actions);
  node.append(bubble, foot);
  paintUser(node, message);
  return node;
}

export function paintUser(node, message, { busy = false } = {}) {
  if (message.id) node.dataset.id = String(message.id);
  node.dataset.pending = message.pending ? "1" : "";
  node.querySelector(".user-text").textContent = message.content;
  paintImages(node, message);
  paintVersions(node, message, { busy: busy || Boolean(message.pending) });
  node.querySelector("[data-action=edit]").hidden = !message.id;
  let note = node.querySelector(".pending-note");
  if (message.pending && !note) {
    note = el("p", "pending-note", "Sending…");
    node.querySelector(".bubble").append(note);
  } else if (!message.pending && note) {
    note.remove();
  }
  if (note) note.textContent = message.pendingNote || "Sending…";
}

export function replyElement(message) {
  const node = el("article", "message reply");
  node.dataset.role = "assistant";
  node.dataset.id = String(message.id);
  node.append(el("h3", "visually-hidden", "Reply"));
  const thinking = el("details", "thinking");
  thinking.hidden = true;
  const summary = el("summary");
  summary.append(el("span", "thinking-label", "Thinking"), " ", el("span", "thinking-time"));
  thinking.append(summary, el("div", "thinking-text"));
  const content = el("div", "content markdown");
  const error = el("p", "reply-error");
  error.hidden = true;
  const meta = el("footer", "reply-meta");
  meta.append(
    el("span", "meta-model"),
    el("span", "meta-tokens"),
    el("span", "meta-cost"),
    el("span", "meta-status"),
  );
  const actions = el("div", "actions");
  actions.append(
    versionControl(),
    actionButton("copy", "Copy", "copy"),
    actionButton("retry", "Retry", "refresh"),
    actionButton("regenerate", "Regenerate", "refresh"),
  );
  node.append(thinking, content, error, meta, actions);
  return node;
}

function thinkingSummary(message, now) {
  if (message.status === "streaming" && !message.content) {
    const since = message.reasoningStartedAt ?? now;
    return ["Thinking…", duration(now - since)];
  }
  let ms = message.reasoning_ms;
  if ((ms === null || ms === undefined) && message.reasoningStartedAt && message.answerStartedAt) {
    ms = message.answerStartedAt - message.reasoningStartedAt;
  }
  return ms === null || ms === undefined ? ["Thoughts", ""] : ["Thought for", duration(ms)];
}

function tokensText(usage) {
  if (!usage || usage.prompt_tokens === null || usage.prompt_tokens === undefined) return "";
  const approx = usage.estimated ? "≈ " : "";
  return (
    `${approx}${wholeNumber(usage.prompt_tokens)} in · ` +
    `${approx}${wholeNumber(usage.completion_tokens ?? 0)} out tokens`
  );
}

// Bring a reply's element up to date. `context` says what the page knows around it.
export function paintReply(node, message, { modelName, isLast, busy = false, now = Date.now() }) {
  const streaming = message.status === "streaming";
  node.dataset.status = message.status;
  node.dataset.seq = String(message.seq ?? 0);
  node.setAttribute("aria-busy", String(streaming));

  const thinking = node.querySelector(".thinking");
  thinking.hidden = !message.reasoning;
  if (message.reasoning) {
    const [label, time] = thinkingSummary(message, now);
    thinking.querySelector(".thinking-label").textContent = label;
    thinking.querySelector(".thinking-time").textContent = time;
    const text = thinking.querySelector(".thinking-text");
    if (text.textContent !== message.reasoning) text.textContent = message.reasoning;
  }

  const content = node.querySelector(".content");
  // Re-rendered whole each time: markdown is only correct when parsed from the start.
  if (node._rendered !== message.content) {
    renderMarkdown(content, message.content);
    node._rendered = message.content;
  }
  content.classList.toggle("is-empty", !message.content);

  const error = node.querySelector(".reply-error");
  const failure = message.status === "error" || message.status === "interrupted";
  error.hidden = !(failure && message.error);
  if (message.error) error.textContent = message.error.message || "The reply failed.";

  node.querySelector(".meta-model").textContent = modelName || "";
  node.querySelector(".meta-tokens").textContent = streaming ? "" : tokensText(message.usage);
  const cost = usd(message.cost);
  node.querySelector(".meta-cost").textContent = streaming || cost === null ? "" : cost;
  const status = node.querySelector(".meta-status");
  status.textContent = STATUS_LABELS[message.status] ?? "";
  status.dataset.status = message.status;

  const ended = !streaming;
  const failed = message.status in STATUS_LABELS;
  node.querySelector("[data-action=copy]").hidden = !message.content;
  node.querySelector("[data-action=retry]").hidden = !(ended && failed);
  node.querySelector("[data-action=regenerate]").hidden = !(ended && !failed && isLast);
  paintVersions(node, message, { busy: busy || streaming });
}
