// The public page of a share link: replies are model-written markdown, rendered with the chat
// page's sanitiser (scripts, handlers and foreign images removed; the CSP backs it up). The
// server rendered the text escaped, so this page also reads as plain text without script.

import { copyText } from "../chat/js/clipboard.js";
import { renderMarkdown } from "../chat/js/markdown.js";

for (const node of document.querySelectorAll("[data-markdown]")) {
  renderMarkdown(node, node.textContent);
  node.classList.add("markdown");
  node.dataset.rendered = "1";
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action=copy-code]");
  if (!button) return;
  const code = button.closest(".code-block")?.querySelector("code");
  const before = button.textContent;
  button.textContent = (await copyText(code?.textContent ?? "")) ? "Copied" : "Copy failed";
  setTimeout(() => {
    button.textContent = before;
  }, 1500);
});

document.body.dataset.ready = "1";
