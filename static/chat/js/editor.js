// The inline editor of a question: Enter sends the new text, Shift+Enter adds a line, Esc or
// Cancel closes it. While the server decides, its controls are disabled.

function element(tag, props = {}) {
  return Object.assign(document.createElement(tag), props);
}

// Open an editor in `node` for `content`; onSubmit(text) is called with the new text. Returns
// { fail(message) } to show a refusal and give the controls back.
export function openEditor(node, content, fieldId, onSubmit) {
  const existing = node.querySelector(".edit-form");
  if (existing) {
    existing.querySelector("textarea").focus();
    return existing.editor;
  }
  const form = element("form", { className: "edit-form" });
  const label = element("label", {
    className: "visually-hidden",
    htmlFor: fieldId,
    textContent: "Edit your message",
  });
  const area = element("textarea", {
    id: fieldId,
    value: content,
    rows: Math.min(10, content.split("\n").length + 1),
  });
  const error = element("p", { className: "edit-error" });
  error.setAttribute("role", "alert");
  const save = element("button", { type: "submit", className: "primary", textContent: "Send" });
  const cancel = element("button", {
    type: "button",
    className: "secondary",
    textContent: "Cancel",
  });
  const buttons = element("div", { className: "edit-actions" });
  buttons.append(save, cancel);
  form.append(label, area, error, buttons);
  node.classList.add("editing");
  node.append(form);
  area.focus();

  const controls = () => form.querySelectorAll("button, textarea");
  const close = () => {
    form.remove();
    node.classList.remove("editing");
    node.querySelector("[data-action=edit]")?.focus();
  };
  cancel.addEventListener("click", close);
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      // Esc closes the editor; it must not also stop a streaming reply.
      event.stopPropagation();
      close();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!area.value.trim()) return;
    error.textContent = "";
    for (const control of controls()) control.disabled = true;
    onSubmit(area.value);
  });
  form.editor = {
    fail(message) {
      error.textContent = message;
      for (const control of controls()) control.disabled = false;
    },
  };
  return form.editor;
}
