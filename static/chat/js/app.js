// The chat page: builds the sidebar, header, model picker, composer, settings, presets and the
// thread, connects them to the session (session.js: the open conversation and everything said
// with the server), and draws what the session reports. Page-wide concerns live here: the
// address bar, opening a conversation or a new chat, Esc, and what follows the model chosen.
//
// State for tests and assistive tech lives in the DOM: body[data-ready], #connection
// [data-connection], and each reply's [data-status] and [data-seq].

import { ThreadActions } from "./actions.js";
import * as api from "./api.js";
import { Composer } from "./composer.js";
import { Drawer } from "./drawer.js";
import { ChatHeader } from "./header.js";
import { ImageTray, noVisionMessage } from "./images.js";
import { MessageList } from "./messages.js";
import { ModelPicker } from "./picker.js";
import { PresetsDialog, showPresetNote } from "./presets.js";
import { ChatSession } from "./session.js";
import { SettingsPanel } from "./settings.js";
import { Sidebar } from "./sidebar.js";
import { ChatSocket } from "./socket.js";
import { Thread } from "./thread.js";
import { Transfer } from "./transfer.js";
import { ImageViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);

// The note on a question not yet accepted.
const pendingNote = (open) => (open ? "Sending…" : "Waiting for the connection…");

function conversationFromUrl() {
  const id = Number(new URLSearchParams(location.search).get("c"));
  return Number.isInteger(id) && id > 0 ? id : null;
}

class ChatApp {
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
    this.header = new ChatHeader({ onRetitle: () => this.session.retitle() });
    this.transfer = new Transfer({ onImported: () => this.sidebar.reload() });
    this.presets = new PresetsDialog({
      currentSettings: () => this.currentSettings(),
      onStart: (preset) => this.startFromPreset(preset),
      modelName: (id) => this.picker.modelById(id)?.name ?? id,
    });
    // The session sends on the socket and reads what it receives.
    this.socket = new ChatSocket({
      path: $("app").dataset.wsPath,
      onFrame: (frame) => this.session.receive(frame),
      onState: (state) => this.showConnection(state),
      onOpen: () => this.session.resubscribe(),
      onRefused: (frame, reason) => this.session.tooLarge(frame, reason),
      onUnauthorized: () => api.goToLogin(),
    });
    this.session = new ChatSession({
      socket: this.socket,
      messages: this.messages,
      hooks: {
        onError: (text) => this.composer.showError(text),
        onActivity: (id) => this.sidebar.touch(id),
        onCreated: (id, created) => this.created(id, created),
        onMessages: ({ scroll }) => this.showMessages({ scroll }),
        onDetail: (conversation) => this.showDetail(conversation),
        onTitle: (id, title, here) => {
          this.sidebar.setTitle(id, title);
          if (here) this.header.showTitle(title);
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
    this.actions = new ThreadActions({
      thread: this.thread,
      session: this.session,
      composer: this.composer,
      viewer: this.viewer,
      model: () => this.picker.selected,
    });
    this.bindPage();
    this.socket.connect();
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
    $("presets-button").addEventListener("click", (event) =>
      this.presets.open({ returnTo: event.currentTarget }),
    );
    $("save-preset").addEventListener("click", (event) =>
      this.presets.open({ returnTo: event.currentTarget, forSaving: true }),
    );
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
    this.header.showTitle("Loading…");
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
    this.header.showTitle(null);
    this.header.showTotal("0");
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
    this.header.showConnection(state);
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
    this.header.showTitle(conversation.title);
    this.header.showTotal(conversation.total_cost);
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
    this.header.showTitle(title);
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
    if (request.kind === "regenerate") this.actions.enable(request.message, true);
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
      pendingNote: pendingNote(this.socket.isOpen),
    });
  }

  stop() {
    if (this.session.stop()) this.composer.setStopping();
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

  // The header's menu and the export links follow the open conversation.
  showConversationTools() {
    this.header.showConversation(this.session.conversationId);
    this.transfer.setConversation(this.session.conversationId);
  }

  updateComposer() {
    const busy = this.messages.isBusy();
    if (busy !== this.composer.streaming) this.composer.setStreaming(busy);
    this.thread.tickWhileThinking();
  }
}

new ChatApp().start();
