// Copying text for the user (a reply, a code block, a share link).

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // The Clipboard API needs a secure context and permission; fall back to a selection.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

// Say "Copied" on the button for a moment, then put its label back.
export async function copyWithFeedback(button, text) {
  const label = button.querySelector(".action-label") ?? button;
  const before = label.textContent;
  label.textContent = (await copyText(text)) ? "Copied" : "Copy failed";
  setTimeout(() => {
    label.textContent = before;
  }, 1500);
}
