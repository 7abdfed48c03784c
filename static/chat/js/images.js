// Images for vision models in the composer: picked, pasted or dropped, checked here against the
// same limits the server applies (so a refusal is instant and says why), uploaded at once
// (POST /api/images) and sent by id with the question.
//
// The tray's state is in the DOM for tests and assistive tech: each image's [data-state] is
// "uploading" or "ready".

import * as api from "./api.js";

// The server's defaults; the page states the configured limits on #app (data-max-image-*).
const DEFAULT_MAX_BYTES = 5 * 1024 * 1024;
const DEFAULT_MAX_COUNT = 4;
const TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];
const TYPE_NAMES = "PNG, JPEG, WebP or GIF";

function megabytes(bytes) {
  const value = bytes / (1024 * 1024);
  return value >= 10 || Number.isInteger(value) ? String(Math.round(value)) : value.toFixed(1);
}

function limitFromPage(name, fallback) {
  const value = Number(document.getElementById("app")?.dataset[name]);
  return Number.isInteger(value) && value > 0 ? value : fallback;
}

export function noVisionMessage(modelName) {
  const who = modelName || "This model";
  return `${who} cannot read images. Pick a model marked “vision” to attach images.`;
}

export class ImageTray {
  // onError(message): a refusal to show; onChange(): images were added, uploaded or removed.
  constructor({ onError, onChange }) {
    this.onError = onError;
    this.onChange = onChange;
    this.maxBytes = limitFromPage("maxImageBytes", DEFAULT_MAX_BYTES);
    this.maxCount = limitFromPage("maxImages", DEFAULT_MAX_COUNT);
    this.items = [];
    this.vision = false;
    this.modelName = "";
    this.keys = 0;
    this.list = document.getElementById("attachments");
    this.button = document.getElementById("attach");
    this.input = document.getElementById("image-input");
    this.help = document.getElementById("attach-help");
    this.box = document.getElementById("composer-box");
    this.bind();
  }

  bind() {
    this.button.addEventListener("click", () => {
      // aria-disabled, not disabled: the button stays focusable and says why it does nothing.
      if (!this.vision) this.onError(noVisionMessage(this.modelName));
      else this.input.click();
    });
    this.input.addEventListener("change", () => {
      this.add([...this.input.files]);
      this.input.value = "";
    });
    document.getElementById("prompt").addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files ?? [])];
      if (!files.length) return;
      // Pasted text still goes in the box; only a paste that is just files stops here.
      if (!event.clipboardData.getData("text/plain")) event.preventDefault();
      this.add(files);
    });
    this.box.addEventListener("dragover", (event) => {
      if (!event.dataTransfer?.types.includes("Files")) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = this.vision ? "copy" : "none";
      this.box.dataset.dragging = "1";
    });
    this.box.addEventListener("dragleave", (event) => {
      if (!this.box.contains(event.relatedTarget)) this.box.dataset.dragging = "";
    });
    this.box.addEventListener("drop", (event) => {
      if (!event.dataTransfer?.files.length) return;
      event.preventDefault();
      this.box.dataset.dragging = "";
      this.add([...event.dataTransfer.files]);
    });
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest(".attachment-remove");
      if (button) this.remove(button.closest(".attachment").dataset.key, { focus: true });
    });
  }

  // The picked model: images can be attached only for a model that reads them.
  setModel(model) {
    this.vision = Boolean(model?.capabilities?.includes("vision"));
    this.modelName = model?.name ?? "";
    this.button.setAttribute("aria-disabled", String(!this.vision));
    this.input.disabled = !this.vision;
    const limits = `${TYPE_NAMES}, up to ${megabytes(this.maxBytes)} MB each`;
    this.help.textContent = this.vision
      ? `Attach up to ${this.maxCount} images (${limits}).`
      : noVisionMessage(this.modelName);
    this.button.title = this.help.textContent;
  }

  get count() {
    return this.items.length;
  }

  get uploading() {
    return this.items.some((item) => item.state === "uploading");
  }

  // What a refused file is told, or "" when it may be uploaded.
  check(file, accepted) {
    if (!this.vision) return noVisionMessage(this.modelName);
    const name = file.name ? `“${file.name}”` : "This file";
    if (!TYPES.includes(file.type)) return `${name} is not a ${TYPE_NAMES} image.`;
    if (file.size > this.maxBytes) {
      return (
        `${name} is ${megabytes(file.size)} MB; images are limited to ` +
        `${megabytes(this.maxBytes)} MB each.`
      );
    }
    if (this.items.length + accepted >= this.maxCount) {
      return `A message can carry at most ${this.maxCount} images.`;
    }
    return "";
  }

  add(files) {
    const errors = [];
    let accepted = 0;
    for (const file of files) {
      const problem = this.check(file, accepted);
      if (problem) {
        if (!errors.includes(problem)) errors.push(problem);
        continue;
      }
      accepted += 1;
      const item = {
        key: `image-${(this.keys += 1)}`,
        name: file.name || "image",
        state: "uploading",
      };
      this.items.push(item);
      this.upload(item, file);
    }
    if (errors.length) this.onError(errors.join(" "));
    this.render();
  }

  async upload(item, file) {
    try {
      const image = await api.uploadImage(file);
      Object.assign(item, { state: "ready", id: image.id, url: image.url });
    } catch (error) {
      // The server's reason (not an image, too large, unsupported), said once.
      if (this.items.includes(item)) this.onError(`“${item.name}”: ${error.message}`);
      this.items = this.items.filter((other) => other !== item);
    }
    this.render();
  }

  remove(key, { focus = false } = {}) {
    const index = this.items.findIndex((item) => item.key === key);
    if (index < 0) return;
    this.items.splice(index, 1);
    this.render();
    if (focus) {
      const buttons = this.list.querySelectorAll(".attachment-remove");
      (buttons[Math.min(index, buttons.length - 1)] ?? document.getElementById("prompt")).focus();
    }
  }

  // The uploaded images to send, as {id, url}, and an empty tray.
  take() {
    const images = this.items
      .filter((item) => item.state === "ready")
      .map(({ id, url, name }) => ({ id, url, name }));
    this.items = [];
    this.render();
    return images;
  }

  // A send the server refused gives its images back, unless new ones were attached meanwhile.
  restore(images) {
    if (this.items.length || !images.length) return;
    this.items = images.map((image) => ({
      ...image,
      key: `image-${(this.keys += 1)}`,
      state: "ready",
    }));
    this.render();
  }

  render() {
    this.list.replaceChildren(...this.items.map((item) => this.element(item)));
    this.list.hidden = this.items.length === 0;
    this.list.dataset.uploading = this.uploading ? "1" : "";
    this.onChange?.();
  }

  element(item) {
    const li = document.createElement("li");
    li.className = "attachment";
    li.dataset.key = item.key;
    li.dataset.state = item.state;
    if (item.state === "ready") {
      const img = document.createElement("img");
      img.className = "attachment-thumb";
      img.src = item.url;
      img.alt = item.name;
      li.append(img);
    } else {
      const label = document.createElement("span");
      label.className = "attachment-state";
      label.textContent = "Uploading…";
      li.append(label);
    }
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "attachment-remove";
    remove.setAttribute("aria-label", `Remove ${item.name}`);
    remove.textContent = "×";
    li.append(remove);
    return li;
  }
}
