// The chat page: builds the sidebar, model picker, composer, settings, presets and the thread,
// connects them to the session (session.js: the open conversation and everything said with the
// server), and draws what the session reports. Page-wide concerns live here: the address bar,
// the header (title, total cost, conversation menu, connection), Esc, and the thread's buttons.
//
// State for tests and assistive tech lives in the DOM: body[data-ready], #connection
// [data-connection], and each reply's [data-status] and [data-seq].

import * as api from "./api.js";
import { copyWithFeedback } from "./clipboard.js";
import { Composer } from "./composer.js";
import { Drawer } from "./drawer.js";
import { openEditor } from "./editor.js";
import { usd } from "./format.js";
import { ImageTray, noVisionMessage } from "./images.js";
import { MessageList } from "./messages.js";
import { ModelPicker } from "./picker.js";
import { Popover } from "./popover.js";
import { PresetsDialog, showPresetNote } from "./presets.js";
import { ChatSession } from "./session.js";
import { SettingsPanel } from "./settings.js";
import { ShareDialog } from "./sharing.js";
import { Sidebar } from "./sidebar.js";
import { Thread } from "./thread.js";
import { Transfer } from "./transfer.js";
import { ImageViewer } from "./viewer.js";

const CONNECTION_LABELS = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

const $ = (id) => document.getElementById(id);

// The note on a question not yet accepted.
const pendingNote = (open) => (open ? "Sending…" : "Waiting for the connection…");

function conversationFromUrl() {
  const id = Number(new URLSearchParams(location.search).get("c"));
  return Number.isInteger(id) && id > 0 ? id : null;
}

class ChatApp {
  constructor() {
    this.siteName = document.title;
  }

  async start() {
    this.messages = new MessageList({
      onUpdate: (message) => this.thread.schedulePaint(message),
      onChange: () => this.updateComposer(),
    });
    this.thread = new Thread({
      messages: this.messages,
      modelName: (id) => this.picker.modelById(id)?.name ?? id ?? "",
    });
    this.sidebar = new Sidebar({
      onOpen: (id) => this.open(id, { push: true }),
      onDeleted: (id) => this.deleted(id),
      onError: (message) => this.composer.showError(message),
    });
    this.picker = new ModelPicker({
      onPick: (id) => this.pickModel(id),
      onError: (message) => this.composer.showError(message),
    });
    this.composer = new Composer({
      onSend: (content) => this.send(content),
      onStop: () => this.stop(),
      refusal: () => this.refusal(),
    });
    this.tray = new ImageTray({ onError: (message) => this.composer.showError(message) });
    this.settings = new SettingsPanel({ onSave: (values) => this.saveSettings(values) });
    this.drawer = new Drawer();
    this.viewer = new ImageViewer();
    this.shareDialog = new ShareDialog();
    this.transfer = new Transfer({ onImported: () => this.sidebar.reload() });
    this.presets = new PresetsDialog({
      currentSettings: () => this.currentSettings(),
      onStart: (preset) => this.startFromPreset(preset),
      modelName: (id) => this.picker.modelById(id)?.name ?? id,
    });
    this.conversationMenu = new Popover($("conv-menu-button"), $("conv-menu"));
    this.session = new ChatSession({
      path: $("app").dataset.wsPath,
      messages: this.messages,
      hooks: {
        onConnection: (state) => this.showConnection(state),
        onUnauthorized: () => api.goToLogin(),
        onError: (text) => this.composer.showError(text),
        onActivity: (id) => this.sidebar.touch(id),
        onCreated: (id, created) => this.created(id, created),
        onMessages: ({ scroll }) => this.showMessages({ scroll }),
        onDetail: (conversation) => this.showDetail(conversation),
        onTitle: (id, title, here) => {
          this.sidebar.setTitle(id, title);
          if (here) this.showTitle(title);
        },
        onRefused: (request, text) => this.refused(request, text),
        onGone: (id) => {
          this.sidebar.remove(id);
          this.newChat();
          this.composer.showError("That conversation no longer exists.");
        },
        onModelUnavailable: () => this.reloadModels(),
      },
    });
    this.bindPage();
    this.session.connect();
    await this.picker.load();
    await this.sidebar.reload();
    const id = conversationFromUrl();
    if (id) await this.open(id);
    else this.newChat({ push: false });
    document.body.dataset.ready = "1";
  }

  bindPage() {
    $("new-chat").addEventListener("click", () => this.newChat());
    window.addEventListener("popstate", () => {
      const id = conversationFromUrl();
      if (id) this.open(id);
      else this.newChat({ push: false });
    });
    document.addEventListener("keydown", (event) => this.onKey(event));
    document.addEventListener("conversation-renamed", (event) => {
      if (event.detail.id === this.session.conversationId) this.showTitle(event.detail.title);
    });
    $("thread").addEventListener("click", (event) => this.onThreadClick(event));
    $("presets-button").addEventListener("click", (event) =>
      this.presets.open({ returnTo: event.currentTarget }),
    );
    $("save-preset").addEventListener("click", (event) =>
      this.presets.open({ returnTo: event.currentTarget, forSaving: true }),
    );
    // Titles are written once per conversation; a new one (billed like any) only when asked.
    $("retitle").addEventListener("click", () => {
      if (this.session.conversationId === null) return;
      this.conversationMenu.close(false);
      this.session.retitle();
    });
    $("share-open").addEventListener("click", () => {
      if (this.session.conversationId !== null) {
        this.shareDialog.open(this.session.conversationId, $("conv-menu-button"));
      }
    });
    $("preset-clear").addEventListener("click", () => {
      this.newChat({ push: false });
    });
  }

  onKey(event) {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    // A dialog handles its own Esc (it closes); so do the picker, settings and inline editors.
    if (event.target.closest?.("dialog")) return;
    if (this.drawer.isOpen) {
      this.drawer.close();
    } else if (this.messages.isBusy()) {
      event.preventDefault();
      this.stop();
    }
  }

  // Conversations ------------------------------------------------------------------------------

  // Another conversation (or a new chat) takes the page: nothing of the last one stays.
  clearView() {
    this.thread.reset();
    this.composer.clearError();
    this.drawer.close();
  }

  async open(id, { push = false } = {}) {
    if (push) history.pushState({}, "", `?c=${id}`);
    this.session.open(id);
    this.clearView();
    this.showConversationTools();
    this.sidebar.setActive(id);
    this.showTitle("Loading…");
    this.thread.setWelcome(false);
    this.updateComposer();
    this.session.watch(id);
    await this.session.refresh();
    this.composer.focus();
  }

  newChat({ push = true } = {}) {
    if (push && location.search) history.pushState({}, "", location.pathname);
    this.session.open(null);
    this.clearView();
    this.showConversationTools();
    this.sidebar.setActive(null);
    this.showTitle(null);
    this.showTotal("0");
    this.settings.load(this.session.newChatSettings);
    this.setPreset(null);
    this.chooseModel(null);
    this.thread.setWelcome(true);
    this.updateComposer();
    this.composer.focus();
  }

  deleted(id) {
    this.session.unwatch(id);
    if (id === this.session.conversationId) this.newChat();
  }

  // What the session reports -------------------------------------------------------------------

  showConnection(state) {
    $("connection").dataset.connection = state;
    $("connection-label").textContent = CONNECTION_LABELS[state] ?? state;
    this.thread.setPendingNote(pendingNote(state === "open"));
  }

  // Questions or replies were added or removed.
  showMessages({ scroll }) {
    this.thread.render();
    this.updateComposer();
    if (scroll) this.thread.scrollToEnd();
  }

  // The conversation as the server answered it (a read, or a switch of versions).
  showDetail(conversation) {
    this.showTitle(conversation.title);
    this.showTotal(conversation.total_cost);
    if (!this.settings.isOpen) this.settings.load(conversation);
    this.chooseModel(conversation.model);
    this.thread.render();
    this.updateComposer();
  }

  // A new chat's first question made conversation `id`; `here` when the page still shows it.
  created(id, { title, model, here }) {
    this.sidebar.touch(id, { title, model });
    if (!here) return;
    this.setPreset(null);
    this.showConversationTools();
    history.pushState({}, "", `?c=${id}`);
    this.sidebar.setActive(id);
    this.showTitle(title);
  }

  // A request the server turned down: nothing changed there, so undo what the page showed.
  refused(request, text) {
    if (request.kind === "send") {
      this.composer.restoreDraft(request.content);
      this.tray.restore(request.images ?? []);
    }
    if (request.kind === "edit" && request.editor) {
      request.editor.fail(text);
    } else {
      this.composer.showError(text);
    }
    if (request.kind === "regenerate") this.enableActions(request.message, true);
    this.thread.render();
    this.updateComposer();
  }

  // Asking -------------------------------------------------------------------------------------

  // Why the composer's message cannot go now, checked before anything is sent ("" if it can).
  refusal() {
    if (!this.tray.count) return "";
    if (this.tray.uploading) return "Wait for the images to finish uploading.";
    const model = this.picker.modelById(this.picker.selected);
    if (!model?.capabilities?.includes("vision")) {
      // The server would refuse too (vision_required); saying so here sends nothing.
      return `${noVisionMessage(model?.name)} Or remove the images to send the text alone.`;
    }
    return "";
  }

  send(content) {
    if (!this.picker.selected) {
      this.composer.restoreDraft(content);
      this.composer.showError("Pick a model first.");
      return;
    }
    this.session.send(content, {
      model: this.picker.selected,
      images: this.tray.take(),
      pendingNote: pendingNote(this.session.isOpen),
    });
  }

  stop() {
    if (this.session.stop()) this.composer.setStopping();
  }

  // A message's action buttons, off while its regeneration is asked for.
  enableActions(key, enabled) {
    for (const button of this.thread.element(key)?.querySelectorAll(".actions button") ?? []) {
      button.disabled = !enabled;
    }
  }

  regenerate(message) {
    this.enableActions(message.id, false);
    this.session.regenerate(message.id, { model: this.picker.selected });
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
      this.session.edit(message.id, content, { model: this.picker.selected, images, editor });
    });
  }

  onThreadClick(event) {
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

  // Show the previous or next version at a message's place.
  async showVersion(message, step) {
    const versions = message.versions ?? [];
    const target = versions[versions.indexOf(message.id) + step];
    if (target === undefined) return;
    if (this.messages.isBusy()) {
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

  // Models, settings and presets ---------------------------------------------------------------

  // The conversation's model, or the default for a new chat (see ModelPicker.choose).
  chooseModel(modelId) {
    this.picker.choose(modelId);
    this.paintModel();
  }

  // What follows the model chosen besides the picker: the image tray, the notice of a model
  // gone from the catalogue, and whether anything can be sent.
  paintModel() {
    const { selected, unavailable } = this.picker;
    this.tray.setModel(unavailable ? null : this.picker.modelById(selected));
    const notice = $("model-notice");
    notice.hidden = !unavailable;
    if (unavailable) {
      notice.textContent =
        `This conversation's model, ${selected}, is no longer available. ` +
        "Pick another model to continue.";
      this.composer.block("Pick another model to continue.");
    } else if (!this.picker.models.length) {
      this.composer.block("No models are available right now.");
    } else {
      this.composer.block("");
    }
  }

  async pickModel(id) {
    if (this.session.conversationId === null) {
      this.picker.setSelected(id);
      this.paintModel();
      return;
    }
    try {
      const updated = await this.session.setModel(id);
      if (!updated) return;
      this.picker.setSelected(updated.model);
      this.paintModel();
      this.composer.clearError();
    } catch (error) {
      this.composer.showError(error.message);
      if (error.code === "model_unavailable") this.reloadModels();
    }
  }

  async reloadModels() {
    if (await this.picker.reload()) this.chooseModel(this.picker.selected);
  }

  async saveSettings(values) {
    const toConversation = await this.session.saveSettings(values);
    return toConversation ? "Saved." : "Saved: they apply from this chat's first message.";
  }

  // The settings a preset saved now would hold: the model picked and the settings form as it
  // reads (saved or not), over the parameters the form does not show.
  currentSettings() {
    const form = this.settings.read();
    if (form.error) return { error: form.error };
    const params = { ...(this.session.savedSettings()?.params ?? {}) };
    delete params.temperature;
    delete params.max_tokens;
    delete params.system_prompt;
    return {
      model: this.picker.unavailable ? null : this.picker.selected,
      system_prompt: form.system_prompt,
      params: { ...params, ...form.params },
    };
  }

  startFromPreset(preset) {
    this.newChat();
    this.session.newChatSettings = {
      system_prompt: preset.system_prompt ?? "",
      params: { ...preset.params },
    };
    this.settings.load(this.session.newChatSettings);
    if (preset.model && this.picker.modelById(preset.model)) {
      this.picker.setSelected(preset.model);
      this.paintModel();
    }
    this.setPreset(preset);
    this.composer.focus();
  }

  // The preset a new chat starts from (sent with its first question), and its note.
  setPreset(preset) {
    this.session.preset = preset;
    showPresetNote(preset, (id) => this.picker.modelById(id));
  }

  // Header and composer ------------------------------------------------------------------------

  // Share and export need a conversation; a new chat has none yet.
  showConversationTools() {
    const id = this.session.conversationId;
    $("conv-menu-root").hidden = id === null;
    if (id === null) this.conversationMenu.close(false);
    this.transfer.setConversation(id);
  }

  showTitle(title) {
    $("chat-title").textContent = title || "New chat";
    document.title = title ? `${title} · ${this.siteName}` : this.siteName;
  }

  showTotal(total) {
    const element = $("total-cost");
    element.dataset.total = total ?? "0";
    element.textContent = `Total ${usd(total ?? "0")}`;
  }

  updateComposer() {
    const busy = this.messages.isBusy();
    if (busy !== this.composer.streaming) this.composer.setStreaming(busy);
    this.thread.tickWhileThinking();
  }
}

new ChatApp().start();
