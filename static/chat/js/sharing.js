// The Share dialog of a conversation: create a read-only link to a snapshot of it (reasoning,
// costs and the system prompt only when the owner ticks them), copy it, and revoke live links.

import * as api from "./api.js";
import { copyWithFeedback } from "./clipboard.js";
import { closeOnBackdrop, openModal } from "./dialogs.js";

const OPTIONS = ["include_reasoning", "include_costs", "include_system_prompt"];
const OPTION_NAMES = {
  include_reasoning: "reasoning",
  include_costs: "costs",
  include_system_prompt: "system prompt",
};

const $ = (id) => document.getElementById(id);

function describe(share) {
  const extras = OPTIONS.filter((name) => share[name]).map((name) => OPTION_NAMES[name]);
  const when = new Date(share.created).toLocaleString();
  return extras.length ? `Created ${when}, with ${extras.join(", ")}` : `Created ${when}`;
}

export class ShareDialog {
  constructor() {
    this.dialog = $("share-dialog");
    this.form = $("share-form");
    this.result = $("share-result");
    this.url = $("share-url");
    this.status = $("share-status");
    this.list = $("share-list");
    this.none = $("share-none");
    this.conversationId = null;
    this.createButton = $("share-create");
    this.createButton.addEventListener("click", () => this.create());
    $("share-copy").addEventListener("click", (event) =>
      copyWithFeedback(event.currentTarget, this.url.value),
    );
    this.list.addEventListener("click", (event) => this.onListClick(event));
    closeOnBackdrop(this.dialog);
  }

  async open(conversationId, returnTo) {
    this.conversationId = conversationId;
    // Every link starts private: the owner opts in to each extra each time.
    for (const name of OPTIONS) this.form.elements[name].checked = false;
    this.result.hidden = true;
    this.url.value = "";
    this.say("");
    this.list.replaceChildren();
    this.none.hidden = true;
    openModal(this.dialog, { focus: this.form.elements.include_reasoning, returnTo });
    await this.loadLinks();
  }

  say(message, state = "") {
    this.status.textContent = message;
    this.status.dataset.state = state;
  }

  async create() {
    const id = this.conversationId;
    const options = Object.fromEntries(
      OPTIONS.map((name) => [name, this.form.elements[name].checked]),
    );
    this.createButton.disabled = true;
    this.say("Creating the link…");
    try {
      const share = await api.createShare(id, options);
      if (id !== this.conversationId) return;
      this.url.value = share.url;
      this.result.hidden = false;
      this.say("Link created. Anyone with it can read this conversation as it is now.", "ok");
      this.url.focus();
      this.url.select();
      await this.loadLinks();
    } catch (error) {
      this.say(error.message, "error");
    } finally {
      this.createButton.disabled = false;
    }
  }

  async loadLinks() {
    const id = this.conversationId;
    let shares;
    try {
      shares = (await api.listShares(id)).shares;
    } catch (error) {
      this.say(error.message, "error");
      return;
    }
    if (id !== this.conversationId) return;
    this.list.replaceChildren(...shares.map((share) => this.item(share)));
    this.none.hidden = shares.length > 0;
  }

  item(share) {
    const li = document.createElement("li");
    li.className = "share-item";
    li.dataset.token = share.token;
    const link = document.createElement("a");
    link.href = share.url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.className = "share-link";
    link.textContent = share.url;
    const note = document.createElement("span");
    note.className = "help";
    note.textContent = describe(share);
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.className = "secondary";
    revoke.dataset.action = "revoke";
    revoke.textContent = "Revoke";
    revoke.setAttribute("aria-label", `Revoke ${share.url}`);
    li.append(link, note, revoke);
    return li;
  }

  async onListClick(event) {
    const button = event.target.closest("button[data-action=revoke]");
    if (!button) return;
    const item = button.closest(".share-item");
    const token = item.dataset.token;
    button.disabled = true;
    try {
      await api.revokeShare(token);
    } catch (error) {
      // Already revoked (in another tab): the list below says how things are.
      if (error.status !== 404) {
        this.say(error.message, "error");
        button.disabled = false;
        return;
      }
    }
    if (this.url.value.endsWith(`/s/${token}`)) {
      this.result.hidden = true;
      this.url.value = "";
    }
    this.say("Link revoked. It now shows “not found”.", "ok");
    await this.loadLinks();
    // Focus stays in the dialog: on the next link's Revoke, or on Create link.
    (this.list.querySelector("button[data-action=revoke]") ?? this.createButton).focus();
  }
}
