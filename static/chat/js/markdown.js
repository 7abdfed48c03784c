// Model output as HTML: markdown by marked, then sanitised by DOMPurify on every render (a
// half-streamed reply included), then code blocks highlighted and given a copy button.
//
// Model output is untrusted: a prompt injection can make a model write HTML or markdown meant
// to run script, imitate the page (forms, buttons) or leak data through a URL. DOMPurify keeps
// only what marked itself writes, an allow-list: any other element (input, form, iframe, svg,
// style, ...) and attribute is removed; the hooks below keep images to this site and data: URLs
// (the page's CSP says the same), and make links open in a new tab without opener or referrer.

import { Marked } from "../../vendor/marked-18.2.1/marked.esm.js";
import DOMPurify from "../../vendor/dompurify-3.4.18/purify.es.mjs";
import hljs from "../../vendor/highlight.js-11.12.0/highlight.min.js";

const markdown = new Marked({ gfm: true, breaks: false });
// A task list item's box as text: marked writes it as an <input>, which the allow-list refuses.
markdown.use({ renderer: { checkbox: ({ checked }) => (checked ? "☑ " : "☐ ") } });
hljs.configure({ ignoreUnescapedHTML: true });

const BLOCKED_SRC = "data-blocked-src";
// Code blocks name their language for the highlighter; no other class is model-chosen, so a
// reply cannot pass for one of the page's own elements (.reply, .code-block, ...).
const CODE_CLASS = /^language-[\w+#.-]+$/;

// Everything marked's renderer writes with GFM, and nothing else. Highlighting, copy buttons
// and blocked-image notes are added after sanitising, by this page.
const PURIFY = {
  ALLOWED_TAGS: ["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol",
    "li", "pre", "code", "em", "strong", "del", "a", "img", "table", "thead", "tbody", "tr", "th",
    "td"],
  ALLOWED_ATTR: ["href", "title", "src", "alt", "class", "start", "align"],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  // Model HTML must not take over ids the page uses (<div id="prompt">).
  SANITIZE_NAMED_PROPS: true,
};

function isLocalImage(src) {
  const value = src.trim();
  if (/^data:image\//i.test(value)) return true;
  try {
    const url = new URL(value, location.href);
    return url.origin === location.origin && /^https?:$/.test(url.protocol);
  } catch {
    return false;
  }
}

DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName === "class" && !(node.tagName === "CODE" && CODE_CLASS.test(data.attrValue))) {
    data.keepAttr = false;
  }
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  if (node.tagName === "IMG") {
    const src = node.getAttribute("src") ?? "";
    if (!isLocalImage(src)) {
      // Removed here, inside DOMPurify's inert document, so the browser never requests it.
      node.removeAttribute("src");
      node.setAttribute(BLOCKED_SRC, src);
    }
  }
});

function blockedImage(img) {
  const src = img.getAttribute(BLOCKED_SRC);
  const label = img.getAttribute("alt") || "image";
  const note = document.createElement("span");
  note.className = "blocked-image";
  note.title = "Images from other sites are not loaded.";
  note.append("Image not loaded: ");
  let url = null;
  try {
    url = new URL(src, location.href);
  } catch {
    // Not a URL at all: show the alt text only.
  }
  if (url && /^https?:$/.test(url.protocol)) {
    const link = document.createElement("a");
    link.href = url.href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.textContent = label;
    note.append(link, ` (${url.host})`);
  } else {
    note.append(label);
  }
  img.replaceWith(note);
}

function languageOf(code) {
  const match = /\blanguage-([\w+#.-]+)/.exec(code.className);
  return match ? match[1].toLowerCase() : "";
}

function decorateCode(pre) {
  const code = pre.querySelector("code");
  if (!code) return;
  const language = languageOf(code);
  if (language && hljs.getLanguage(language)) hljs.highlightElement(code);
  const block = document.createElement("div");
  block.className = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const name = document.createElement("span");
  name.className = "code-lang";
  name.textContent = language || "text";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-code";
  copy.dataset.action = "copy-code";
  copy.textContent = "Copy code";
  head.append(name, copy);
  pre.replaceWith(block);
  block.append(head, pre);
}

export function renderMarkdown(target, text) {
  const html = markdown.parse(text ?? "");
  target.innerHTML = DOMPurify.sanitize(html, PURIFY);
  for (const img of target.querySelectorAll(`img[${BLOCKED_SRC}]`)) blockedImage(img);
  for (const pre of target.querySelectorAll("pre")) decorateCode(pre);
}
