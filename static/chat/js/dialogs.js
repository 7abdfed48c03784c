// Modal dialogs use the native <dialog>: showModal() makes the rest of the page inert, keeps Tab
// inside the dialog and closes it on Esc. What the browser does not promise everywhere is where
// focus goes afterwards, so the element that opened the dialog gets it back explicitly.

export function openModal(dialog, { focus = null, returnTo = document.activeElement } = {}) {
  if (!dialog.open) dialog.showModal();
  (focus ?? dialog.querySelector("[autofocus]"))?.focus();
  dialog.addEventListener(
    "close",
    () => {
      // An action that closed the dialog may have moved focus on purpose (to the message box).
      const active = document.activeElement;
      const lost = !active || active === document.body || dialog.contains(active);
      if (lost && returnTo?.isConnected && !returnTo.closest("[hidden]")) returnTo.focus();
    },
    { once: true },
  );
}

// A click on the backdrop (outside the dialog's box) closes it, as Esc does.
export function closeOnBackdrop(dialog) {
  dialog.addEventListener("click", (event) => {
    if (event.target !== dialog) return;
    const box = dialog.getBoundingClientRect();
    const inside =
      event.clientX >= box.left &&
      event.clientX <= box.right &&
      event.clientY >= box.top &&
      event.clientY <= box.bottom;
    if (!inside) dialog.close();
  });
}
