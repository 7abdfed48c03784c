// A button that shows a small panel of actions below it (the conversation menu). Esc or a click
// elsewhere closes it and focus goes back to the button; arrow keys move between the actions,
// Tab leaves as usual.

const ITEMS = "a[href], button:not(:disabled)";

export class Popover {
  constructor(button, panel) {
    this.button = button;
    this.panel = panel;
    button.addEventListener("click", () => (this.isOpen ? this.close() : this.open()));
    panel.addEventListener("keydown", (event) => this.onKey(event));
    // Choosing an action closes the panel (the action itself runs on the same click).
    panel.addEventListener("click", (event) => {
      if (event.target.closest(ITEMS)) this.close(false);
    });
    document.addEventListener("click", (event) => {
      if (this.isOpen && !button.contains(event.target) && !panel.contains(event.target)) {
        this.close(false);
      }
    });
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  items() {
    return [...this.panel.querySelectorAll(ITEMS)].filter((item) => !item.closest("[hidden]"));
  }

  open() {
    this.panel.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    this.items()[0]?.focus();
  }

  close(returnFocus = true) {
    if (!this.isOpen) return;
    this.panel.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
    if (returnFocus) this.button.focus();
  }

  onKey(event) {
    if (event.key === "Escape") {
      // Esc here closes the panel; it must not also stop a streaming reply.
      event.preventDefault();
      event.stopPropagation();
      this.close();
      return;
    }
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    const items = this.items();
    const index = items.indexOf(document.activeElement);
    const step = event.key === "ArrowDown" ? 1 : -1;
    const next = items[(index + step + items.length) % items.length];
    if (next) {
      event.preventDefault();
      next.focus();
    }
  }
}
