// Export and import. Exports are plain downloads (the server names the file); an import sends
// the chosen file and reports what the server said: how many conversations it added, or why it
// refused the whole file (nothing is half-imported).

import * as api from "./api.js";

const $ = (id) => document.getElementById(id);

export class Transfer {
  // onImported(ids): conversations were added (the list should be read again).
  constructor({ onImported }) {
    this.onImported = onImported;
    this.markdown = $("export-md");
    this.json = $("export-json");
    this.input = $("import-file");
    this.status = $("transfer-status");
    $("import-button").addEventListener("click", () => this.input.click());
    this.input.addEventListener("change", () => {
      const [file] = this.input.files;
      this.input.value = "";
      if (file) this.import(file);
    });
  }

  // The conversation menu's downloads follow the open conversation.
  setConversation(id) {
    for (const [link, format] of [
      [this.markdown, "md"],
      [this.json, "json"],
    ]) {
      if (id === null) link.removeAttribute("href");
      else link.href = api.exportUrl(id, format);
    }
  }

  say(message, state) {
    this.status.textContent = message;
    this.status.dataset.state = state;
    this.status.hidden = !message;
  }

  async import(file) {
    this.say(`Importing “${file.name}”…`, "busy");
    try {
      const result = await api.importConversations(file);
      const count = result.imported;
      this.say(`Imported ${count} conversation${count === 1 ? "" : "s"}.`, "ok");
      await this.onImported(result.conversations);
    } catch (error) {
      this.say(error.message, "error");
    }
  }
}
