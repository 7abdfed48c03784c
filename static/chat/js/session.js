// The chat session with the server (docs/protocol.md): the open conversation and its messages
// (a MessageList), its re-reads and the changes saved to it over HTTP, the requests sent on the
// websocket until `accepted` or `error` answers them, the conversations the socket watches, and
// resyncs after a missed frame. What each frame received changes is in frames.js.
//
// No DOM: the page gives it the socket (socket.js) and passes on what the socket receives, and
// registers callbacks (`hooks`, listed in the constructor) to draw what changed.
// `view` changes with every conversation switch: late answers for an old view are dropped.
// `shape` changes whenever the page itself adds or removes messages, so that a re-read asked
// for before such a change cannot undo it.

import * as api from "./api.js";
import { FrameHandler } from "./frames.js";

// The server lets a socket watch MAX_WATCHED_CONVERSATIONS (20 by default); conversations left
// recently stay watched so that their titles still reach the sidebar.
const KEEP_WATCHING = 6;
const ACCEPT_PATIENCE_MS = 10000;

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

const NEW_CHAT_SETTINGS = () => ({ system_prompt: "", params: {} });

export class ChatSession {
  // socket: a ChatSocket; messages: the MessageList of the open conversation.
  // hooks: onError(text), onActivity(conversationId), onCreated(id, {title, model, here}),
  // onMessages({scroll}) (questions or replies were added or removed), onDetail(conversation)
  // (the server's read was merged), onTitle(id, title, here), onRefused(request, text),
  // onGone(id) (the open conversation no longer exists), onModelUnavailable().
  constructor({ socket, messages, hooks }) {
    this.socket = socket;
    this.messages = messages;
    this.hooks = hooks;
    this.conversationId = null;
    // The open conversation without its messages: title, model, settings, total cost.
    this.conversation = null;
    // request_id -> what the page asked for, until `accepted` or `error` answers it.
    this.pending = new Map();
    this.watched = [];
    // The settings a new chat's first question carries, and the preset it starts from.
    this.newChatSettings = NEW_CHAT_SETTINGS();
    this.preset = null;
    this.view = 0;
    this.shape = 0;
    this.refreshing = null;
    this.refreshAgain = false;
    this.resyncing = false;
    this.frames = new FrameHandler(this);
  }

  // The socket's frames ------------------------------------------------------------------------

  receive(frame) {
    this.frames.handle(frame);
  }

  // The server closed the socket on a frame larger than it takes (1009): that request is
  // refused, with the server's reason, and its text given back.
  tooLarge(frame, reason) {
    this.frames.handle({
      type: "error",
      code: "content_too_long",
      message: reason || "This message is too large to send.",
      request_id: frame.request_id,
    });
  }

  // After (re)connecting: the server forgot what this socket watched.
  resubscribe() {
    this.watched = [];
    this.resyncing = false;
    this.frames.forgetPieces();
    if (this.conversationId !== null) this.watch(this.conversationId);
  }

  // Conversations ------------------------------------------------------------------------------

  // Another view: conversation `id`, or a new chat (null) with these settings. Nothing read yet.
  open(id, newChatSettings = NEW_CHAT_SETTINGS()) {
    this.view += 1;
    this.shape += 1;
    this.refreshing = null;
    this.refreshAgain = false;
    this.resyncing = false;
    this.messages.reset();
    this.conversationId = id;
    this.conversation = null;
    if (id === null) this.newChatSettings = newChatSettings;
  }

  // The settings the open conversation has (a new chat's, until its first question).
  savedSettings() {
    return this.conversationId === null ? this.newChatSettings : this.conversation;
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
      if (error.status === 404) this.hooks.onGone(id);
      else this.hooks.onError(error.message);
      return;
    }
    if (view !== this.view) return;
    this.showDetail(detail, { reshape: shape === this.shape });
  }

  // The conversation as the server answered it (a read, or a switch of versions).
  showDetail(detail, { reshape }) {
    const { messages, ...conversation } = detail;
    this.conversation = conversation;
    this.messages.merge(messages, { reshape });
    this.hooks.onDetail(conversation);
  }

  // Show the version `target` at its place; the conversation continues from the version shown,
  // so it is taken whole from the server's answer. True once shown.
  async showVersion(target) {
    const view = this.view;
    // A re-read asked for before this answer must not put the old version back.
    this.shape += 1;
    let detail;
    try {
      detail = await api.showVersion(target);
    } catch (error) {
      if (view === this.view) this.hooks.onError(error.message);
      return false;
    }
    if (view !== this.view) return false;
    this.shape += 1;
    this.showDetail(detail, { reshape: true });
    return true;
  }

  // The open conversation's model; null when the answer is for a conversation left since.
  async setModel(model) {
    const updated = await api.updateConversation(this.conversationId, { model });
    if (updated.id !== this.conversationId) return null;
    this.conversation = { ...this.conversation, model: updated.model };
    return updated;
  }

  // The settings form's values: kept for a new chat's first question (false), or saved to the
  // open conversation (true). Parameters the form does not show (top_p) are kept.
  async saveSettings(values) {
    if (this.conversationId === null) {
      const params = { ...this.newChatSettings.params };
      delete params.temperature;
      delete params.max_tokens;
      this.newChatSettings = {
        system_prompt: values.system_prompt,
        params: { ...params, ...values.params },
      };
      return false;
    }
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
    return true;
  }

  // Watching -----------------------------------------------------------------------------------

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

  // A frame went missing: the server answers with an exact snapshot of each reply in flight.
  resync() {
    if (this.resyncing || this.conversationId === null || !this.socket.isOpen) return;
    this.resyncing = true;
    this.socket.send({ type: "resync", conversation: this.conversationId });
  }

  // Asking -------------------------------------------------------------------------------------

  request(kind, frame, { model, ...extra }) {
    const requestId = newRequestId();
    const request = { kind, view: this.view, model, ...extra };
    this.pending.set(requestId, request);
    // Never a silent hang: say so when the server is slow to answer.
    request.timer = setTimeout(() => {
      if (this.pending.has(requestId) && this.socket.isOpen) {
        this.hooks.onError("The server has not answered yet; still waiting…");
      }
    }, ACCEPT_PATIENCE_MS);
    this.socket.send({ ...frame, request_id: requestId, model: model ?? undefined });
    return request;
  }

  // A question for the open conversation, or the first of a new chat, shown at once as pending.
  send(content, { model, images, pendingNote }) {
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
    if (images.length) frame.images = images.map((image) => image.id);
    const key = `pending-${newRequestId()}`;
    this.request("send", frame, { model, content, key, images, conversation: this.conversationId });
    this.messages.addQuestion(key, content, pendingNote, images);
    this.shape += 1;
    this.hooks.onMessages({ scroll: true });
  }

  // `extra` travels with the request to onRefused (the editor to tell, say).
  edit(message, content, { model, images, ...extra }) {
    this.request("edit", { type: "edit", message, content }, {
      model,
      ...extra,
      message,
      images,
      content,
    });
  }

  regenerate(message, { model }) {
    this.request("regenerate", { type: "regenerate", message }, { model, message });
  }

  // Stop the replies being written, and the questions not yet accepted as soon as their replies
  // exist. True when there was something to stop.
  stop() {
    const streaming = this.messages.streamingReplies();
    for (const message of streaming) this.socket.send({ type: "stop", message: message.id });
    for (const request of this.pending.values()) {
      if (request.view === this.view) request.stopRequested = true;
    }
    return Boolean(streaming.length || this.pending.size);
  }

  // A new title for the open conversation (billed like any).
  retitle() {
    this.socket.send({ type: "retitle", conversation: this.conversationId });
  }

  // The server made the conversation of a first question (and this socket now watches it).
  created(id, request, here) {
    this.watched = this.watched.filter((other) => other !== id);
    this.watched.push(id);
    const title = firstLine(request.content);
    if (here) {
      this.conversationId = id;
      this.conversation = {
        id,
        title,
        model: request.model,
        system_prompt: this.newChatSettings.system_prompt,
        params: this.newChatSettings.params,
        total_cost: "0",
      };
      this.preset = null;
    }
    this.hooks.onCreated(id, { title, model: request.model, here });
  }
}
