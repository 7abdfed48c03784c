// The message box: Enter sends, Shift+Enter adds a line; Send becomes Stop while a reply is
// being written; refusals are shown beside it and the draft is kept or given back.

const MAX_HEIGHT_PX = 240;

// Characters as the server counts them (code points): an emoji is one, not two UTF-16 units.
function characters(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

const number = (value) => value.toLocaleString("en-US");

export class Composer {
  // refusal(content): why this message cannot be sent now ("" when it can); the draft stays.
  constructor({ onSend, onStop, refusal = () => "" }) {
    this.onSend = onSend;
    this.onStop = onStop;
    this.refusal = refusal;
    this.form = document.getElementById("composer");
    this.input = document.getElementById("prompt");
    this.sendButton = document.getElementById("send");
    this.stopButton = document.getElementById("stop");
    this.errorEl = document.getElementById("composer-error");
    this.streaming = false;
    this.blockedReason = "";
    // The server's MAX_MESSAGE_CHARS: a longer message is refused here, before it is sent.
    this.maxChars = Number(document.getElementById("app")?.dataset.maxMessageChars) || 0;
    this.bind();
  }

  bind() {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (event) => {
      // isComposing: Enter that confirms an IME candidate must not send.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener("input", () => this.fit());
    this.stopButton.addEventListener("click", () => this.onStop());
  }

  submit() {
    const content = this.input.value;
    if (!content.trim() || this.streaming || this.blockedReason) return;
    const refusal = this.lengthRefusal(content) || this.refusal(content);
    if (refusal) {
      this.showError(refusal);
      return;
    }
    this.clearError();
    this.input.value = "";
    this.fit();
    this.onSend(content);
  }

  // Worded as the server's own refusal (content_too_long).
  lengthRefusal(content) {
    // Never more characters than UTF-16 units: most messages need no counting.
    if (!this.maxChars || content.length <= this.maxChars) return "";
    const length = characters(content);
    if (length <= this.maxChars) return "";
    const limit = number(this.maxChars);
    return `The message is ${number(length)} characters long; the limit is ${limit}.`;
  }

  // Grow with the text up to a limit. Setting element.style from script is allowed by the CSP.
  fit() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, MAX_HEIGHT_PX)}px`;
  }

  restoreDraft(content) {
    if (!this.input.value.trim()) {
      this.input.value = content;
      this.fit();
    }
  }

  setStreaming(streaming) {
    this.streaming = streaming;
    this.form.dataset.streaming = streaming ? "1" : "";
    const stopHadFocus = document.activeElement === this.stopButton;
    this.sendButton.hidden = streaming;
    this.stopButton.hidden = !streaming;
    this.stopButton.disabled = false;
    if (!streaming && stopHadFocus) this.input.focus();
  }

  setStopping() {
    this.stopButton.disabled = true;
  }

  // A reason the user cannot send now (no usable model), shown in place of the hint.
  block(reason) {
    this.blockedReason = reason;
    this.input.disabled = Boolean(reason);
    this.sendButton.disabled = Boolean(reason);
    this.input.placeholder = reason || "Write a message…";
  }

  showError(message) {
    this.errorEl.textContent = message;
    this.errorEl.hidden = false;
  }

  clearError() {
    this.errorEl.hidden = true;
    this.errorEl.textContent = "";
  }

  focus() {
    if (!this.input.disabled) this.input.focus();
  }
}
