// The conversation list: newest first, grouped by date, searchable, paged, with rename and
// delete (after a confirmation dialog).

import * as api from "./api.js";
import { actionButton } from "./render.js";

const GROUPS = ["Today", "Yesterday", "Previous 7 days", "Older"];
const DAY_MS = 24 * 60 * 60 * 1000;
const SEARCH_DELAY_MS = 250;

function groupOf(iso, now = new Date()) {
  const when = new Date(iso);
  const today = new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime();
  if (when.getTime() >= today) return GROUPS[0];
  if (when.getTime() >= today - DAY_MS) return GROUPS[1];
  if (when.getTime() >= today - 7 * DAY_MS) return GROUPS[2];
  return GROUPS[3];
}

export class Sidebar {
  constructor({ onOpen, onDeleted, onError }) {
    this.onOpen = onOpen;
    this.onDeleted = onDeleted;
    this.onError = onError;
    this.items = [];
    this.nextPage = null;
    this.query = "";
    this.activeId = null;
    this.loading = false;
    // Answers to an older search are dropped when a newer one was asked.
    this.generation = 0;
    this.groupsEl = document.getElementById("conversation-groups");
    this.emptyEl = document.getElementById("history-empty");
    this.moreButton = document.getElementById("load-more");
    this.search = document.getElementById("search");
    this.dialog = document.getElementById("confirm-delete");
    this.bind();
  }

  bind() {
    let timer = null;
    this.search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.setQuery(this.search.value.trim()), SEARCH_DELAY_MS);
    });
    document.getElementById("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      clearTimeout(timer);
      this.setQuery(this.search.value.trim());
    });
    this.moreButton.addEventListener("click", () => this.load());
    // Scrolling to the end of the list loads the next page; the button stays for keyboards.
    const observer = new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) this.load();
    });
    observer.observe(this.moreButton);
    this.groupsEl.addEventListener("click", (event) => this.onClick(event));
  }

  async setQuery(query) {
    if (query === this.query) return;
    this.query = query;
    await this.reload();
  }

  async reload() {
    this.items = [];
    this.nextPage = 1;
    this.generation += 1;
    this.loading = false;
    await this.load();
  }

  async load() {
    if (this.loading || this.nextPage === null) return;
    this.loading = true;
    const generation = this.generation;
    try {
      const data = await api.listConversations({ page: this.nextPage, q: this.query });
      if (generation !== this.generation) return;
      const known = new Set(this.items.map((item) => item.id));
      this.items.push(...data.conversations.filter((item) => !known.has(item.id)));
      this.nextPage = data.next_page;
      this.render();
    } catch (error) {
      if (generation === this.generation) this.onError(error.message);
    } finally {
      if (generation === this.generation) this.loading = false;
    }
  }

  // A conversation changed (new message, new title): it moves to the top.
  touch(id, changes = {}) {
    const index = this.items.findIndex((item) => item.id === id);
    const item = index >= 0 ? this.items.splice(index, 1)[0] : null;
    if (item === null && !changes.title) return;
    const updated = { ...(item ?? { id }), updated: new Date().toISOString(), ...changes };
    // A search list only shows what matched; a brand-new conversation joins the plain list.
    if (this.query && item === null) return;
    this.items.unshift(updated);
    this.render();
  }

  setTitle(id, title) {
    const item = this.items.find((entry) => entry.id === id);
    if (!item) return;
    item.title = title;
    this.render();
  }

  remove(id) {
    this.items = this.items.filter((item) => item.id !== id);
    this.render();
  }

  setActive(id) {
    this.activeId = id;
    for (const link of this.groupsEl.querySelectorAll(".conv-link")) {
      const active = Number(link.dataset.id) === id;
      if (active) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
      link.closest(".conv").classList.toggle("active", active);
    }
  }

  render() {
    // A rename in progress keeps its input; the list is drawn again when it ends.
    if (this.renaming) return;
    const focusedId = document.activeElement?.closest?.(".conv")?.dataset.id;
    const buckets = new Map(GROUPS.map((name) => [name, []]));
    const now = new Date();
    for (const item of this.items) buckets.get(groupOf(item.updated, now)).push(item);
    const sections = [];
    for (const [name, items] of buckets) {
      if (items.length === 0) continue;
      const section = document.createElement("section");
      section.className = "conv-group";
      const heading = document.createElement("h2");
      heading.textContent = name;
      const list = document.createElement("ul");
      for (const item of items) list.append(this.itemElement(item));
      section.append(heading, list);
      sections.push(section);
    }
    this.groupsEl.replaceChildren(...sections);
    this.emptyEl.hidden = this.items.length > 0;
    this.emptyEl.textContent = this.query ? "No conversation matches." : "No conversations yet.";
    this.moreButton.hidden = this.nextPage === null;
    if (focusedId) this.groupsEl.querySelector(`.conv[data-id="${focusedId}"] .conv-link`)?.focus();
  }

  itemElement(item) {
    const li = document.createElement("li");
    li.className = "conv";
    li.dataset.id = String(item.id);
    const link = document.createElement("a");
    link.className = "conv-link";
    link.href = `?c=${item.id}`;
    link.dataset.id = String(item.id);
    link.textContent = item.title || "Untitled";
    link.title = item.title || "";
    if (item.id === this.activeId) {
      link.setAttribute("aria-current", "page");
      li.classList.add("active");
    }
    const actions = document.createElement("div");
    actions.className = "conv-actions";
    const rename = actionButton("rename", "Rename", "edit");
    const remove = actionButton("delete", "Delete", "trash");
    rename.setAttribute("aria-label", `Rename “${item.title}”`);
    remove.setAttribute("aria-label", `Delete “${item.title}”`);
    actions.append(rename, remove);
    li.append(link, actions);
    return li;
  }

  onClick(event) {
    const target = event.target.closest("a, button");
    if (!target) return;
    const li = target.closest(".conv");
    const id = Number(li.dataset.id);
    if (target.classList.contains("conv-link")) {
      // Plain clicks stay in the page; a middle or modified click opens a tab as usual.
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
      event.preventDefault();
      this.onOpen(id);
    } else if (target.dataset.action === "rename") {
      this.startRename(li, id);
    } else if (target.dataset.action === "delete") {
      this.confirmDelete(id);
    }
  }

  startRename(li, id) {
    const item = this.items.find((entry) => entry.id === id);
    const link = li.querySelector(".conv-link");
    const input = document.createElement("input");
    input.type = "text";
    input.className = "rename-input";
    input.value = item?.title ?? "";
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
    link.hidden = true;
    li.querySelector(".conv-actions").hidden = true;
    li.prepend(input);
    input.focus();
    input.select();
    this.renaming = true;
    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      this.renaming = false;
      const title = input.value.trim();
      if (save && title && title !== item?.title) {
        try {
          const updated = await api.updateConversation(id, { title });
          // The server counts a rename as an update: the list order follows it.
          this.touch(id, { title: updated.title, updated: updated.updated });
          document.dispatchEvent(new CustomEvent("conversation-renamed", { detail: updated }));
        } catch (error) {
          this.onError(error.message);
          this.render();
        }
      } else {
        this.render();
      }
      this.groupsEl.querySelector(`.conv[data-id="${id}"] .conv-link`)?.focus();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        // Esc here cancels the rename; it must not also stop a streaming reply.
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }

  confirmDelete(id) {
    const item = this.items.find((entry) => entry.id === id);
    document.getElementById("confirm-delete-text").textContent =
      `“${item?.title ?? "This conversation"}” and its messages will be deleted. ` +
      "What it already cost stays on your bill.";
    this.dialog.returnValue = "";
    this.dialog.showModal();
    this.dialog.addEventListener(
      "close",
      async () => {
        if (this.dialog.returnValue !== "delete") return;
        try {
          await api.deleteConversation(id);
        } catch (error) {
          if (error.status !== 404) {
            this.onError(error.message);
            return;
          }
        }
        this.remove(id);
        this.onDeleted(id);
      },
      { once: true },
    );
  }
}
