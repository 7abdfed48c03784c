// Presets: named model + system prompt + parameters. The dialog lists the user's own presets and
// those an admin published (read-only here), starts a new chat from one, saves the current
// settings as a new one, and renames or deletes the user's own. The note above the composer
// says which preset a new chat starts from.

import * as api from "./api.js";
import { closeOnBackdrop, openModal } from "./dialogs.js";

const $ = (id) => document.getElementById(id);
const EXCERPT_CHARS = 80;

function excerpt(text) {
  const line = (text ?? "").replace(/\s+/g, " ").trim();
  return line.length > EXCERPT_CHARS ? `${line.slice(0, EXCERPT_CHARS - 1)}…` : line;
}

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function button(label, action, className = "secondary") {
  const element = node("button", className, label);
  element.type = "button";
  element.dataset.action = action;
  return element;
}

// "Mistral Nemo · temperature 0.4 · “Answer like a pirate.”"
export function presetSummary(preset, modelName) {
  const parts = [preset.model ? modelName(preset.model) : "Your default model"];
  const params = preset.params ?? {};
  if (params.temperature !== undefined) parts.push(`temperature ${params.temperature}`);
  if (params.top_p !== undefined) parts.push(`top-p ${params.top_p}`);
  if (params.max_tokens !== undefined) parts.push(`max ${params.max_tokens} tokens`);
  if (preset.system_prompt) parts.push(`“${excerpt(preset.system_prompt)}”`);
  return parts.join(" · ");
}

// The note above the composer of a new chat that starts from a preset (hidden for none).
// modelById(id): the catalogue's model, or null when it is not available.
export function showPresetNote(preset, modelById) {
  const note = $("preset-note");
  note.hidden = !preset;
  note.dataset.preset = preset ? String(preset.id) : "";
  if (!preset) return;
  const summary = presetSummary(preset, (id) => modelById(id)?.name ?? id);
  let text = `Starting from the preset “${preset.name}”: ${summary}`;
  if (preset.model && !modelById(preset.model)) {
    text += `. Its model, ${preset.model}, is not available; the model picked above is used.`;
  }
  $("preset-note-text").textContent = text;
}

export class PresetsDialog {
  // currentSettings(): {model, system_prompt, params} or {error}; onStart(preset): start a chat;
  // modelName(id): a model's display name.
  constructor({ currentSettings, onStart, modelName }) {
    this.currentSettings = currentSettings;
    this.onStart = onStart;
    this.modelName = modelName;
    this.presets = [];
    this.dialog = $("presets-dialog");
    this.list = $("preset-list");
    this.empty = $("presets-empty");
    this.status = $("presets-status");
    this.saveForm = $("preset-save-form");
    this.nameInput = $("preset-name");
    this.summary = $("preset-save-summary");
    this.list.addEventListener("click", (event) => this.onListClick(event));
    this.saveForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    $("presets-close").addEventListener("click", () => this.dialog.close());
    closeOnBackdrop(this.dialog);
  }

  say(message, state = "") {
    this.status.textContent = message;
    this.status.dataset.state = state;
  }

  // `forSaving`: opened from the settings panel, with the name field ready.
  async open({ returnTo = document.activeElement, forSaving = false } = {}) {
    this.say("");
    this.nameInput.value = "";
    const current = this.currentSettings();
    this.summary.textContent = current.error
      ? current.error
      : `Saves: ${presetSummary(current, this.modelName)}`;
    this.dialog.dataset.loaded = "";
    openModal(this.dialog, { focus: forSaving ? this.nameInput : null, returnTo });
    await this.load();
    if (!forSaving && this.dialog.open && !this.dialog.contains(document.activeElement)) {
      (this.list.querySelector("button") ?? this.nameInput).focus();
    }
  }

  async load() {
    try {
      this.presets = (await api.listPresets()).presets;
    } catch (error) {
      this.say(error.message, "error");
      return;
    }
    this.render();
    this.dialog.dataset.loaded = "1";
  }

  render() {
    this.list.replaceChildren(...this.presets.map((preset) => this.item(preset)));
    this.empty.hidden = this.presets.length > 0;
  }

  item(preset) {
    const li = node("li", "preset");
    li.dataset.id = String(preset.id);
    const head = node("div", "preset-head");
    head.append(node("span", "preset-name", preset.name));
    if (preset.published) {
      const badge = node("span", "badge badge-published", "published");
      badge.title = "Published by an admin for everyone; only an admin can change it.";
      head.append(badge);
    }
    const summary = node("p", "preset-summary help", presetSummary(preset, this.modelName));
    const actions = node("div", "preset-actions");
    const start = button("Start chat", "start", "primary");
    start.setAttribute("aria-label", `Start a chat from “${preset.name}”`);
    actions.append(start);
    if (preset.editable) {
      const rename = button("Rename", "rename");
      rename.setAttribute("aria-label", `Rename “${preset.name}”`);
      const remove = button("Delete", "delete");
      remove.setAttribute("aria-label", `Delete “${preset.name}”`);
      actions.append(rename, remove);
    }
    li.append(head, summary, actions);
    return li;
  }

  onListClick(event) {
    const target = event.target.closest("button[data-action]");
    if (!target) return;
    const li = target.closest(".preset");
    const preset = this.presets.find((entry) => String(entry.id) === li.dataset.id);
    if (!preset) return;
    const action = target.dataset.action;
    if (action === "start") {
      this.dialog.close();
      this.onStart(preset);
    } else if (action === "rename") {
      this.startRename(li, preset);
    } else if (action === "delete") {
      this.remove(preset, li);
    }
  }

  startRename(li, preset) {
    const form = node("form", "preset-rename");
    const id = `preset-rename-${preset.id}`;
    const label = node("label", "visually-hidden", `New name for “${preset.name}”`);
    label.htmlFor = id;
    const input = node("input");
    input.id = id;
    input.value = preset.name;
    input.maxLength = 80;
    input.required = true;
    const save = node("button", "primary", "Save");
    save.type = "submit";
    const cancel = button("Cancel", "cancel-rename");
    form.append(label, input, save, cancel);
    const head = li.querySelector(".preset-head");
    head.hidden = true;
    li.querySelector(".preset-actions").hidden = true;
    head.after(form);
    input.focus();
    input.select();
    const close = () => {
      this.render();
      this.list.querySelector(`.preset[data-id="${preset.id}"] [data-action=rename]`)?.focus();
    };
    cancel.addEventListener("click", close);
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        // Esc cancels the rename, not the whole dialog.
        event.preventDefault();
        close();
      }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = input.value.trim();
      if (!name) return;
      try {
        const updated = await api.updatePreset(preset.id, { name });
        Object.assign(preset, updated);
        this.say(`Renamed to “${updated.name}”.`, "ok");
        close();
      } catch (error) {
        this.say(error.message, "error");
      }
    });
  }

  async remove(preset, li) {
    const index = [...this.list.children].indexOf(li);
    try {
      await api.deletePreset(preset.id);
    } catch (error) {
      if (error.status !== 404) {
        this.say(error.message, "error");
        return;
      }
    }
    this.presets = this.presets.filter((entry) => entry !== preset);
    this.render();
    this.say(`Deleted “${preset.name}”.`, "ok");
    const buttons = this.list.querySelectorAll(".preset [data-action=start]");
    (buttons[Math.min(index, buttons.length - 1)] ?? this.nameInput).focus();
  }

  async save() {
    const name = this.nameInput.value.trim();
    if (!name) {
      this.say("Give the preset a name.", "error");
      this.nameInput.focus();
      return;
    }
    const current = this.currentSettings();
    if (current.error) {
      this.say(current.error, "error");
      return;
    }
    const body = { name, system_prompt: current.system_prompt, params: current.params };
    if (current.model) body.model = current.model;
    try {
      const preset = await api.createPreset(body);
      this.presets = [...this.presets, preset];
      this.render();
      this.nameInput.value = "";
      this.say(`Saved “${preset.name}”.`, "ok");
    } catch (error) {
      this.say(error.message, "error");
    }
  }
}
