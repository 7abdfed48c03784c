// The chat page: wires the sidebar, model picker, composer and settings to the JSON API and the
// websocket, and keeps the open conversation in step with the server (docs/protocol.md).
//
// State for tests and assistive tech lives in the DOM: body[data-ready], #connection
// [data-connection], and each reply's [data-status] and [data-seq].

import * as api from "./api.js";
import { copyWithFeedback } from "./clipboard.js";
import { Composer } from "./composer.js";
import { Drawer } from "./drawer.js";
import { openEditor } from "./editor.js";
import { describeError, usd } from "./format.js";
import { ImageTray, noVisionMessage } from "./images.js";
import { ModelPicker } from "./picker.js";
import { Popover } from "./popover.js";
import { PresetsDialog, showPresetNote } from "./presets.js";
import { SettingsPanel } from "./settings.js";
import { ShareDialog } from "./sharing.js";
import { Sidebar } from "./sidebar.js";
import { ChatSocket } from "./socket.js";
import { newReply, Thread } from "./thread.js";
import { Transfer } from "./transfer.js";
import { ImageViewer } from "./viewer.js";

// The server lets a socket watch MAX_WATCHED_CONVERSATIONS (20 by default); conversations left
// recently stay watched so that their titles still reach the sidebar.
const KEEP_WATCHING = 6;
const ACCEPT_PATIENCE_MS = 10000;
const CONNECTION_LABELS = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

const $ = (id) => document.getElementById(id);

function newRequestId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // randomUUID needs a secure context; plain-HTTP deployments still get 128 random bits.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// The server's default title for a new conversation, shown until the real one arrives.
function firstLine(content) {
  const line = content.split("\n").find((part) => part.trim()) ?? "";
  return line.trim().slice(0, 80) || "New chat";
}

function conversationFromUrl() {
  const id = Number(new URLSearchParams(location.search).get("c"));
  return Number.isInteger(id) && id > 0 ? id : null;
}

class ChatApp {
  constructor() {
    this.conversationId = null;
    this.conversation = null;
    // request_id -> what the page asked for, until `accepted` or `error` answers it.
    this.pending = new Map();
    this.watched = [];
    this.newChatSettings = { system_prompt: "", params: {} };
    // The preset a new chat starts from, sent with its first question.
    this.preset = null;
    // `view` changes with every conversation switch: late answers for an old view are dropped.
    this.view = 0;
    // `shape` changes whenever the page itself adds or removes messages, so that a re-read
    // asked for before such a change cannot undo it.
    this.shape = 0;
    this.refreshing = null;
    this.refreshAgain = false;
    this.resyncing = false;
    // Snapshots still arriving in pieces, by reply.
    this.partialSnapshots = new Map();
    this.siteName = document.title;
  }

  async start() {
    this.thread = new Thread({
      modelName: (id) => this.picker.modelById(id)?.name ?? id ?? "",
      onChange: () => this.updateComposer(),
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
    this.socket = new ChatSocket({
      path: $("app").dataset.wsPath,
      onFrame: (frame) => this.onFrame(frame),
      onState: (state) => this.showConnection(state),
      onOpen: () => this.resubscribe(),
      // The server closed the socket on a frame larger than it takes (1009): that request is
      // refused, with the server's reason, and its text given back.
      onRefused: (frame, reason) =>
        this.onError({
          type: "error",
          code: "content_too_long",
          message: reason || "This message is too large to send.",
          request_id: frame.request_id,
        }),
      onUnauthorized: () => api.goToLogin(),
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
    document.addEventListener("conversation-renamed", (event) => {
      if (event.detail.id === this.conversationId) this.showTitle(event.detail.title);
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
      if (this.conversationId === null) return;
      this.conversationMenu.close(false);
      this.socket.send({ type: "retitle", conversation: this.conversationId });
    });
    $("share-open").addEventListener("click", () => {
      if (this.conversationId !== null) {
        this.shareDialog.open(this.conversationId, $("conv-menu-button"));
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
    } else if (this.thread.isBusy()) {
      event.preventDefault();
      this.stop();
    }
  }

  // Conversations ------------------------------------------------------------------------------

  switchView() {
    this.view += 1;
    this.shape += 1;
    this.refreshing = null;
    this.refreshAgain = false;
    this.resyncing = false;
    this.thread.reset();
    this.composer.clearError();
    this.drawer.close();
  }

  async open(id, { push = false } = {}) {
    if (push) history.pushState({}, "", `?c=${id}`);
    this.switchView();
    this.conversationId = id;
    this.conversation = null;
    this.showConversationTools();
    this.sidebar.setActive(id);
    this.showTitle("Loading…");
    this.thread.setWelcome(false);
    this.updateComposer();
    this.watch(id);
    await this.refresh();
    this.composer.focus();
  }

  newChat({ push = true } = {}) {
    if (push && location.search) history.pushState({}, "", location.pathname);
    this.switchView();
    this.conversationId = null;
    this.conversation = null;
    this.showConversationTools();
    this.sidebar.setActive(null);
    this.showTitle(null);
    this.showTotal("0");
    this.newChatSettings = { system_prompt: "", params: {} };
    this.settings.load(this.newChatSettings);
    this.setPreset(null);
    this.chooseModel(null);
    this.thread.setWelcome(true);
    this.updateComposer();
    this.composer.focus();
  }

  deleted(id) {
    this.unwatch(id);
    if (id === this.conversationId) this.newChat();
  }

  // Read the open conversation again. Calls made while one runs are folded into one more.
  refresh() {
    if (this.refreshing) {
      this.refreshAgain = true;
      return this.refreshing;
    }
    const view = this.view;
    const run = async () => {
      do {
        this.refreshAgain = false;
        await this.loadConversation(view);
      } while (this.refreshAgain && view === this.view);
    };
    const promise = run().finally(() => {
      if (this.refreshing === promise) this.refreshing = null;
    });
    this.refreshing = promise;
    return promise;
  }

  async loadConversation(view) {
    const id = this.conversationId;
    const shape = this.shape;
    if (id === null) return;
    let detail;
    try {
      detail = await api.getConversation(id);
    } catch (error) {
      if (view !== this.view) return;
      if (error.status === 404) {
        this.sidebar.remove(id);
        this.newChat();
        this.composer.showError("That conversation no longer exists.");
      } else {
        this.composer.showError(error.message);
      }
      return;
    }
    if (view !== this.view) return;
    this.showDetail(detail, { reshape: shape === this.shape });
  }

  // The conversation as the server answered it (a read, or a switch of versions).
  showDetail(detail, { reshape }) {
    const { messages, ...conversation } = detail;
    this.conversation = conversation;
    this.showTitle(conversation.title);
    this.showTotal(conversation.total_cost);
    if (!this.settings.isOpen) this.settings.load(conversation);
    this.chooseModel(conversation.model);
    this.thread.merge(messages, { reshape });
    this.updateComposer();
  }

  // The websocket ------------------------------------------------------------------------------

  watch(id) {
    this.watched = this.watched.filter((other) => other !== id);
    this.watched.push(id);
    while (this.watched.length > KEEP_WATCHING) this.unwatch(this.watched[0]);
    if (this.socket.isOpen) this.socket.send({ type: "watch", conversation: id });
  }

  unwatch(id) {
    this.watched = this.watched.filter((other) => other !== id);
    if (this.socket.isOpen) this.socket.send({ type: "unwatch", conversation: id });
  }

  // After (re)connecting: the server forgot what this socket watched.
  resubscribe() {
    this.watched = [];
    this.resyncing = false;
    this.partialSnapshots.clear();
    if (this.conversationId !== null) this.watch(this.conversationId);
  }

  showConnection(state) {
    $("connection").dataset.connection = state;
    $("connection-label").textContent = CONNECTION_LABELS[state] ?? state;
    this.thread.setPendingNote(state === "open" ? "Sending…" : "Waiting for the connection…");
  }

  onFrame(frame) {
    const handlers = {
      accepted: this.onAccepted,
      started: this.onStarted,
      snapshot: this.onSnapshot,
      snapshot_part: this.onSnapshotPart,
      delta: this.onDelta,
      done: this.onDone,
      title: this.onTitle,
      watching: this.onWatching,
      unwatched: this.onUnwatched,
      error: this.onError,
    };
    handlers[frame.type]?.call(this, frame);
  }

  isHere(frame) {
    return frame.conversation === this.conversationId;
  }

  onAccepted(frame) {
    const request = this.pending.get(frame.request_id);
    if (!request) return;
    this.pending.delete(frame.request_id);
    clearTimeout(request.timer);
    const here = request.view === this.view;
    if (request.kind === "send" && request.conversation === null) {
      this.created(frame.conversation, request, here);
    } else {
      this.sidebar.touch(frame.conversation);
    }
    if (!here) return;
    this.shape += 1;
    if (request.kind === "send") {
      this.thread.settleQuestion(request.key, frame.user_message);
    } else if (request.kind === "edit") {
      this.thread.truncateFrom(request.message);
      // The edited question keeps its images (the server copies them).
      this.thread.add({
        id: frame.user_message,
        role: "user",
        content: request.content,
        images: request.images ?? [],
      });
    } else if (request.kind === "regenerate") {
      this.thread.truncateFrom(request.message);
    }
    this.thread.add(this.thread.get(frame.message) ?? newReply(frame.message, request.model));
    if (request.stopRequested) this.socket.send({ type: "stop", message: frame.message });
    this.thread.render();
    this.updateComposer();
    this.thread.scrollToEnd();
  }

  // The server made the conversation of a first question (and this socket now watches it).
  created(id, request, here) {
    this.watched = this.watched.filter((other) => other !== id);
    this.watched.push(id);
    const title = firstLine(request.content);
    this.sidebar.touch(id, { title, model: request.model });
    if (!here) return;
    this.conversationId = id;
    this.conversation = {
      id,
      title,
      model: request.model,
      system_prompt: this.newChatSettings.system_prompt,
      params: this.newChatSettings.params,
      total_cost: "0",
    };
    this.setPreset(null);
    this.showConversationTools();
    history.pushState({}, "", `?c=${id}`);
    this.sidebar.setActive(id);
    this.showTitle(title);
  }

  onStarted(frame) {
    this.sidebar.touch(frame.conversation);
    if (!this.isHere(frame)) return;
    const known = this.thread.get(frame.message);
    if (known) {
      known.model ??= frame.model;
      return;
    }
    // Another tab (or a request whose answer was lost) started this reply. Its frames from the
    // first delta on reach this page; the conversation's new shape (what the reply answers,
    // what it replaced) is read from the server.
    this.thread.track(newReply(frame.message, frame.model));
    this.shape += 1;
    this.refresh();
  }

  // A long snapshot comes in pieces: a `snapshot` with `more`, then `snapshot_part` frames.
  // It is shown once whole (the server sends nothing else of that reply in between).
  onSnapshot(frame) {
    if (frame.more) {
      this.partialSnapshots.set(frame.message, { ...frame });
      return;
    }
    this.applySnapshot(frame);
  }

  onSnapshotPart(frame) {
    const partial = this.partialSnapshots.get(frame.message);
    if (!partial || partial.seq !== frame.seq) return;
    partial.content += frame.content ?? "";
    partial.reasoning += frame.reasoning ?? "";
    if (frame.more) return;
    this.partialSnapshots.delete(frame.message);
    this.applySnapshot({ ...partial, more: false });
  }

  applySnapshot(frame) {
    if (!this.isHere(frame)) return;
    this.resyncing = false;
    const shown = this.thread.snapshot(frame);
    if (!shown && !this.refreshing) this.refresh();
  }

  onDelta(frame) {
    if (!this.isHere(frame)) return;
    const result = this.thread.delta(frame);
    if (result === "gap") this.resync();
    else if (result === "new" && !this.refreshing) this.refresh();
  }

  // A frame went missing: the server answers with an exact snapshot of each reply in flight.
  resync() {
    if (this.resyncing || this.conversationId === null || !this.socket.isOpen) return;
    this.resyncing = true;
    this.socket.send({ type: "resync", conversation: this.conversationId });
  }

  // The server let go of a conversation this socket watched longest (its watch limit).
  onUnwatched(frame) {
    this.watched = this.watched.filter((other) => other !== frame.conversation);
  }

  onDone(frame) {
    this.sidebar.touch(frame.conversation);
    if (!this.isHere(frame)) return;
    this.thread.done(frame);
    // The total cost changed; and if frames were missed, the saved text is the whole reply.
    this.refresh();
  }

  onTitle(frame) {
    this.sidebar.setTitle(frame.conversation, frame.title);
    if (!this.isHere(frame)) return;
    if (this.conversation) this.conversation.title = frame.title;
    this.showTitle(frame.title);
    // The title was billed too: the running total changed.
    this.refresh();
  }

  onWatching(frame) {
    if (!this.isHere(frame)) return;
    this.resyncing = false;
    // A reply that ended while this page was away, its `done` unseen: read how it ended.
    if (this.thread.missedAnEnd(frame.streaming)) this.refresh();
  }

  onError(frame) {
    const text = describeError(frame.code, frame.message);
    const request = frame.request_id ? this.pending.get(frame.request_id) : null;
    if (request) {
      this.refused(frame.request_id, request, text);
    } else if (frame.code === "not_found" && this.conversationId !== null) {
      // A watch or stop for a conversation deleted elsewhere: the re-read tells.
      this.refresh();
    } else {
      this.composer.showError(text);
    }
    if (frame.code === "model_unavailable") this.reloadModels();
  }

  // A request the server turned down: nothing changed there, so undo what the page showed.
  refused(requestId, request, text) {
    this.pending.delete(requestId);
    clearTimeout(request.timer);
    if (request.view !== this.view) return;
    if (request.kind === "send") {
      this.thread.remove(request.key);
      this.composer.restoreDraft(request.content);
      this.tray.restore(request.images ?? []);
    }
    if (request.kind === "edit" && request.editor) {
      request.editor.fail(text);
    } else {
      this.composer.showError(text);
    }
    if (request.kind === "regenerate") {
      const node = this.thread.get(request.message)?.el;
      for (const button of node?.querySelectorAll(".actions button") ?? []) button.disabled = false;
    }
    this.thread.render();
    this.updateComposer();
  }

  // Asking -------------------------------------------------------------------------------------

  request(kind, frame, extra = {}) {
    const requestId = newRequestId();
    const model = this.picker.selected;
    const request = { kind, view: this.view, model, ...extra };
    this.pending.set(requestId, request);
    // Never a silent hang: say so when the server is slow to answer.
    request.timer = setTimeout(() => {
      if (this.pending.has(requestId) && this.socket.isOpen) {
        this.composer.showError("The server has not answered yet; still waiting…");
      }
    }, ACCEPT_PATIENCE_MS);
    this.socket.send({ ...frame, request_id: requestId, model: model ?? undefined });
    return request;
  }

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
    const frame = { type: "send", conversation: this.conversationId, content };
    if (this.conversationId === null) {
      // A new chat's settings travel with its first question.
      const { system_prompt: systemPrompt, params } = this.newChatSettings;
      const all = { ...params };
      // With a preset, an emptied system prompt must override the preset's.
      if (systemPrompt || this.preset) all.system_prompt = systemPrompt;
      if (Object.keys(all).length) frame.params = all;
      if (this.preset) frame.preset = this.preset.id;
    }
    const images = this.tray.take();
    if (images.length) frame.images = images.map((image) => image.id);
    const key = `pending-${newRequestId()}`;
    this.request("send", frame, { content, key, images, conversation: this.conversationId });
    const note = this.socket.isOpen ? "Sending…" : "Waiting for the connection…";
    this.thread.addQuestion(key, content, note, images);
    this.shape += 1;
    this.thread.render();
    this.updateComposer();
    this.thread.scrollToEnd();
  }

  stop() {
    const streaming = this.thread.streamingReplies();
    for (const message of streaming) this.socket.send({ type: "stop", message: message.id });
    // A question not yet accepted is stopped as soon as its reply exists.
    for (const request of this.pending.values()) {
      if (request.view === this.view) request.stopRequested = true;
    }
    if (streaming.length || this.pending.size) this.composer.setStopping();
  }

  regenerate(message) {
    for (const button of message.el?.querySelectorAll(".actions button") ?? []) {
      button.disabled = true;
    }
    this.request("regenerate", { type: "regenerate", message: message.id }, {
      message: message.id,
    });
  }

  edit(message) {
    const request = { message: message.id, images: message.images ?? [] };
    request.editor = openEditor(message.el, message.content, `edit-${message.id}`, (content) => {
      // The same check as the message box: a text over the limit is never sent.
      const tooLong = this.composer.lengthRefusal(content);
      if (tooLong) {
        request.editor.fail(tooLong);
        return;
      }
      request.content = content;
      this.request("edit", { type: "edit", message: message.id, content }, request);
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

  // Show the previous or next version at a message's place; the conversation continues from
  // the version shown, so the page re-reads it whole from the server's answer.
  async showVersion(message, step) {
    const versions = message.versions ?? [];
    const target = versions[versions.indexOf(message.id) + step];
    if (target === undefined) return;
    if (this.thread.isBusy()) {
      this.composer.showError(
        "Wait for the reply to finish (or stop it) before switching versions.",
      );
      return;
    }
    const view = this.view;
    // A re-read asked for before this answer must not put the old version back.
    this.shape += 1;
    let detail;
    try {
      detail = await api.showVersion(target);
    } catch (error) {
      if (view === this.view) this.composer.showError(error.message);
      return;
    }
    if (view !== this.view) return;
    this.shape += 1;
    this.composer.clearError();
    this.showDetail(detail, { reshape: true });
    // Keyboard users stay on the control they used, now on the version shown.
    const group = this.thread.get(target)?.el?.querySelector(".versions");
    const [forward, back] = ["[data-action=version-next]", "[data-action=version-previous]"];
    const same = group?.querySelector(step > 0 ? forward : back);
    const other = group?.querySelector(step > 0 ? back : forward);
    (same && !same.disabled ? same : other)?.focus();
  }

  // Models and settings ------------------------------------------------------------------------

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
    if (this.conversationId === null) {
      this.picker.setSelected(id);
      this.paintModel();
      return;
    }
    try {
      const updated = await api.updateConversation(this.conversationId, { model: id });
      if (updated.id !== this.conversationId) return;
      this.conversation = { ...this.conversation, model: updated.model };
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
    if (this.conversationId === null) {
      // Parameters the form does not show (a preset's top_p) are kept.
      const params = { ...this.newChatSettings.params };
      delete params.temperature;
      delete params.max_tokens;
      this.newChatSettings = {
        system_prompt: values.system_prompt,
        params: { ...params, ...values.params },
      };
      return "Saved: they apply from this chat's first message.";
    }
    // Other parameters (top_p) are kept; the two in the form replace theirs.
    const params = { ...(this.conversation?.params ?? {}) };
    delete params.temperature;
    delete params.max_tokens;
    delete params.system_prompt;
    const updated = await api.updateConversation(this.conversationId, {
      system_prompt: values.system_prompt,
      params: { ...params, ...values.params },
    });
    if (this.conversation && updated.id === this.conversationId) {
      this.conversation.params = updated.params;
      this.conversation.system_prompt = updated.system_prompt;
    }
    return "Saved.";
  }

  // Presets ------------------------------------------------------------------------------------

  // The settings a preset saved now would hold: the model picked and the settings form as it
  // reads (saved or not), over the parameters the form does not show.
  currentSettings() {
    const form = this.settings.read();
    if (form.error) return { error: form.error };
    const saved = this.conversationId === null ? this.newChatSettings : this.conversation;
    const params = { ...(saved?.params ?? {}) };
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
    this.newChatSettings = {
      system_prompt: preset.system_prompt ?? "",
      params: { ...preset.params },
    };
    this.settings.load(this.newChatSettings);
    if (preset.model && this.picker.modelById(preset.model)) {
      this.picker.setSelected(preset.model);
      this.paintModel();
    }
    this.setPreset(preset);
    this.composer.focus();
  }

  // The preset a new chat starts from (sent with its first question), and its note.
  setPreset(preset) {
    this.preset = preset;
    showPresetNote(preset, (id) => this.picker.modelById(id));
  }

  // Header and composer ------------------------------------------------------------------------

  // Share and export need a conversation; a new chat has none yet.
  showConversationTools() {
    const id = this.conversationId;
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
    const busy = this.thread.isBusy();
    if (busy !== this.composer.streaming) this.composer.setStreaming(busy);
    this.thread.tickWhileThinking();
  }
}

new ChatApp().start();
