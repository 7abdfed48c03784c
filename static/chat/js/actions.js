// The buttons inside the thread: copy a message or a code block, show an image larger, edit a
// question in place, retry or regenerate a reply, and step through the versions stored at a
// message's place. What they ask of the server goes through the session.

import { copyWithFeedback } from "./clipboard.js";
import { openEditor } from "./editor.js";

export class ThreadActions {
  // model(): the model chosen, sent with what is asked; composer: where refusals are shown.
  constructor({ thread, session, composer, viewer, model }) {
    this.thread = thread;
    this.session = session;
    this.composer = composer;
    this.viewer = viewer;
    this.model = model;
    document.getElementById("thread").addEventListener("click", (event) => this.onClick(event));
  }

  onClick(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const message = this.thread.messageAt(button);
    const action = button.dataset.action;
    if (action === "copy-code") {
      const code = button.closest(".code-block")?.querySelector("code");
      copyWithFeedback(button, code?.textContent ?? "");
    } else if (action === "view-image") {
      const img = button.querySelector("img");
      this.viewer.show(img.src, img.alt, button);
    } else if (!message) {
      return;
    } else if (action === "copy") {
      copyWithFeedback(button, message.content);
    } else if (action === "edit") {
      this.edit(message);
    } else if (action === "retry" || action === "regenerate") {
      this.regenerate(message);
    } else if (action === "version-previous" || action === "version-next") {
      this.showVersion(message, action === "version-next" ? 1 : -1);
    }
  }

  // A message's action buttons: off while its regeneration is asked for, on again if refused.
  enable(key, enabled) {
    for (const button of this.thread.element(key)?.querySelectorAll(".actions button") ?? []) {
      button.disabled = !enabled;
    }
  }

  regenerate(message) {
    this.enable(message.id, false);
    this.session.regenerate(message.id, { model: this.model() });
  }

  edit(message) {
    // The edited question keeps the images it had when its editor opened.
    const images = message.images ?? [];
    const node = this.thread.element(message.id);
    const editor = openEditor(node, message.content, `edit-${message.id}`, (content) => {
      // The same check as the message box: a text over the limit is never sent.
      const tooLong = this.composer.lengthRefusal(content);
      if (tooLong) {
        editor.fail(tooLong);
        return;
      }
      this.session.edit(message.id, content, { model: this.model(), images, editor });
    });
  }

  // Show the previous or next version at a message's place.
  async showVersion(message, step) {
    const versions = message.versions ?? [];
    const target = versions[versions.indexOf(message.id) + step];
    if (target === undefined) return;
    if (this.session.messages.isBusy()) {
      this.composer.showError(
        "Wait for the reply to finish (or stop it) before switching versions.",
      );
      return;
    }
    if (!(await this.session.showVersion(target))) return;
    this.composer.clearError();
    // Keyboard users stay on the control they used, now on the version shown.
    const group = this.thread.element(target)?.querySelector(".versions");
    const [forward, back] = ["[data-action=version-next]", "[data-action=version-previous]"];
    const same = group?.querySelector(step > 0 ? forward : back);
    const other = group?.querySelector(step > 0 ? back : forward);
    (same && !same.disabled ? same : other)?.focus();
  }
}
