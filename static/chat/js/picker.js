// The model picker: a button that opens a list of the enabled models with their context length,
// prices per 1M tokens (decimal strings, shown as given) and capability badges. It holds the
// catalogue, the user's default model and the model chosen, and loads and saves the first two.

import * as api from "./api.js";
import { compactNumber, trimDecimal, wholeNumber } from "./format.js";

function text(tag, className, value) {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = value;
  return node;
}

export function priceLine(model) {
  const input = trimDecimal(model.input_price_per_million);
  const output = trimDecimal(model.output_price_per_million);
  return `$${input} in · $${output} out per 1M tokens`;
}

export class ModelPicker {
  // onPick(id): the user picked a model; onError(message): a call failed.
  constructor({ onPick, onError }) {
    this.onPick = onPick;
    this.onError = onError;
    this.models = [];
    this.selected = null;
    this.defaultId = null;
    this.unavailable = false;
    this.root = document.getElementById("picker");
    this.button = document.getElementById("model-button");
    this.nameEl = document.getElementById("model-name");
    this.menu = document.getElementById("model-menu");
    this.list = document.getElementById("model-list");
    this.defaultButton = document.getElementById("make-default");
    this.bind();
  }

  bind() {
    this.button.addEventListener("click", () => (this.isOpen ? this.close() : this.open()));
    this.list.addEventListener("click", (event) => {
      const option = event.target.closest(".model-option");
      if (!option) return;
      this.close();
      this.onPick(option.dataset.model);
    });
    this.list.addEventListener("keydown", (event) => this.moveFocus(event));
    this.defaultButton.addEventListener("click", () => this.makeDefault(this.selected));
    this.menu.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        this.close();
      }
    });
    document.addEventListener("click", (event) => {
      if (this.isOpen && !this.root.contains(event.target)) this.close(false);
    });
  }

  get isOpen() {
    return !this.menu.hidden;
  }

  open() {
    this.menu.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    const current =
      this.list.querySelector("[aria-current=true]") ?? this.list.querySelector("button");
    current?.focus();
    current?.scrollIntoView({ block: "nearest" });
  }

  close(returnFocus = true) {
    if (!this.isOpen) return;
    this.menu.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
    if (returnFocus) this.button.focus();
  }

  moveFocus(event) {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    const options = [...this.list.querySelectorAll(".model-option")];
    const index = options.indexOf(document.activeElement);
    const next = options[index + (event.key === "ArrowDown" ? 1 : -1)];
    if (next) {
      event.preventDefault();
      next.focus();
    }
  }

  // The catalogue and the user's default model, from the server.
  async load() {
    let models = [];
    let defaultId = null;
    try {
      const [catalogue, me] = await Promise.all([api.listModels(), api.getMe()]);
      models = catalogue.models;
      defaultId = me.default_model;
    } catch (error) {
      this.onError(error.message);
    }
    this.setModels(models);
    this.setDefault(defaultId);
  }

  // The catalogue again (a model was withdrawn). False when it could not be read.
  async reload() {
    let models;
    try {
      models = (await api.listModels()).models;
    } catch {
      return false;
    }
    this.setModels(models);
    return true;
  }

  async makeDefault(id) {
    try {
      const me = await api.updateMe({ default_model: id });
      this.setDefault(me.default_model);
    } catch (error) {
      this.onError(error.message);
    }
  }

  setModels(models) {
    this.models = models;
    this.list.replaceChildren(...models.map((model) => this.option(model)));
    this.paint();
  }

  option(model) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "model-option";
    button.dataset.model = model.id;
    button.title = model.description || model.id;
    const top = document.createElement("span");
    top.className = "option-top";
    top.append(text("span", "option-name", model.name));
    for (const capability of model.capabilities ?? []) {
      top.append(text("span", `badge badge-${capability}`, capability));
    }
    top.append(text("span", "badge badge-default", "default"));
    const context = text(
      "span",
      "option-context",
      `${compactNumber(model.context_length)} context`,
    );
    context.title = `${wholeNumber(model.context_length)} tokens of context`;
    const meta = document.createElement("span");
    meta.className = "option-meta";
    meta.append(context, text("span", "option-price", priceLine(model)));
    button.append(top, meta);
    li.append(button);
    return li;
  }

  // `unavailable`: the conversation's model is gone from the catalogue.
  setSelected(modelId, { unavailable = false } = {}) {
    this.selected = modelId;
    this.unavailable = unavailable;
    this.paint();
  }

  setDefault(modelId) {
    this.defaultId = modelId;
    this.paint();
  }

  // The conversation's model, or the user's default for a new chat. A model no longer in the
  // catalogue stays chosen, shown as unavailable.
  choose(modelId) {
    if (modelId && !this.modelById(modelId)) {
      this.setSelected(modelId, { unavailable: true });
    } else {
      this.setSelected(modelId ?? this.defaultModel());
    }
  }

  defaultModel() {
    const preferred = this.defaultId;
    if (preferred && this.modelById(preferred)) return preferred;
    return this.models[0]?.id ?? null;
  }

  modelById(id) {
    return this.models.find((model) => model.id === id) ?? null;
  }

  paint() {
    const model = this.modelById(this.selected);
    this.root.dataset.unavailable = this.unavailable ? "1" : "";
    this.button.dataset.model = this.selected ?? "";
    if (this.unavailable) {
      this.nameEl.textContent = `${this.selected ?? "No model"} (unavailable)`;
    } else if (model) {
      this.nameEl.textContent = model.name;
    } else {
      this.nameEl.textContent = this.models.length ? "Choose a model" : "No models available";
    }
    for (const option of this.list.querySelectorAll(".model-option")) {
      const id = option.dataset.model;
      option.setAttribute("aria-current", String(id === this.selected && !this.unavailable));
      option.querySelector(".badge-default").hidden = id !== this.defaultId;
    }
    this.defaultButton.disabled = !model || this.unavailable || this.selected === this.defaultId;
    const isDefault = Boolean(this.selected) && this.selected === this.defaultId;
    this.defaultButton.textContent = isDefault ? "Used for new chats" : "Use for new chats";
  }
}
