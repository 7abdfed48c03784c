// The per-conversation settings panel: system prompt, temperature, max tokens.

export class SettingsPanel {
  constructor({ onSave }) {
    this.onSave = onSave;
    this.panel = document.getElementById("settings");
    this.toggle = document.getElementById("settings-toggle");
    this.form = document.getElementById("settings-form");
    this.systemPrompt = document.getElementById("system-prompt");
    this.temperature = document.getElementById("temperature");
    this.maxTokens = document.getElementById("max-tokens");
    this.status = document.getElementById("settings-status");
    this.toggle.addEventListener("click", () => (this.isOpen ? this.close() : this.open()));
    document.getElementById("settings-close").addEventListener("click", () => this.close());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    this.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        this.close();
      }
    });
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  open() {
    this.panel.hidden = false;
    this.toggle.setAttribute("aria-expanded", "true");
    this.status.textContent = "";
    this.systemPrompt.focus();
  }

  close() {
    this.panel.hidden = true;
    this.toggle.setAttribute("aria-expanded", "false");
    this.toggle.focus();
  }

  // Show a conversation's settings ({system_prompt, params}) or a new chat's.
  load({ system_prompt: systemPrompt = "", params = {} } = {}) {
    this.systemPrompt.value = systemPrompt ?? "";
    this.temperature.value = params.temperature ?? "";
    this.maxTokens.value = params.max_tokens ?? "";
    this.status.textContent = "";
  }

  // The form as {system_prompt, params}, or an error message. Blank means the model's default.
  read() {
    const params = {};
    const temperature = this.temperature.value.trim();
    if (temperature !== "") {
      const value = Number(temperature);
      if (!Number.isFinite(value) || value < 0 || value > 2) {
        return { error: "Temperature must be a number from 0 to 2." };
      }
      params.temperature = value;
    }
    const maxTokens = this.maxTokens.value.trim();
    if (maxTokens !== "") {
      const value = Number(maxTokens);
      if (!Number.isInteger(value) || value < 1) {
        return { error: "Max tokens must be a whole number above 0." };
      }
      params.max_tokens = value;
    }
    return { system_prompt: this.systemPrompt.value, params };
  }

  async save() {
    const values = this.read();
    if (values.error) {
      this.status.textContent = values.error;
      return;
    }
    this.status.textContent = "Saving…";
    try {
      this.status.textContent = await this.onSave(values);
    } catch (error) {
      this.status.textContent = error.message;
    }
  }
}
