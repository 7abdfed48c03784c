// At phone width the conversation list is a drawer over the page. Closed, it is `inert`: out of
// the tab order and the accessibility tree, not only off screen.

const NARROW = "(max-width: 760px)";

export class Drawer {
  constructor() {
    this.app = document.getElementById("app");
    this.sidebar = document.getElementById("sidebar");
    this.scrim = document.getElementById("scrim");
    this.toggle = document.getElementById("open-sidebar");
    this.narrow = window.matchMedia(NARROW);
    this.toggle.addEventListener("click", () => this.open());
    document.getElementById("close-sidebar").addEventListener("click", () => this.close());
    this.scrim.addEventListener("click", () => this.close());
    this.narrow.addEventListener("change", () => this.sync());
    this.sync();
  }

  get isOpen() {
    return this.narrow.matches && this.app.classList.contains("drawer-open");
  }

  open() {
    this.app.classList.add("drawer-open");
    this.scrim.hidden = false;
    this.toggle.setAttribute("aria-expanded", "true");
    this.sidebar.inert = false;
    document.getElementById("new-chat").focus();
  }

  close() {
    if (!this.app.classList.contains("drawer-open")) return;
    const hadFocus = this.sidebar.contains(document.activeElement);
    this.app.classList.remove("drawer-open");
    this.scrim.hidden = true;
    this.toggle.setAttribute("aria-expanded", "false");
    this.sync();
    if (hadFocus) this.toggle.focus();
  }

  sync() {
    if (!this.narrow.matches) {
      this.app.classList.remove("drawer-open");
      this.scrim.hidden = true;
    }
    this.sidebar.inert = this.narrow.matches && !this.app.classList.contains("drawer-open");
  }
}
