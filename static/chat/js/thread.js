// The open conversation's messages: their state, how stream frames change it, and their DOM.
//
// A reply's text is built from `delta` frames numbered by `seq`. A `snapshot` replaces the text
// and sets `seq`; deltas at or below it are already in the text and are skipped, and a delta that
// skips a number is a gap (the caller asks for a fresh snapshot). Nothing is appended that cannot
// be placed, so text is never doubled; `done` and a re-read from the server correct the rest.

import { paintReply, paintUser, replyElement, userElement } from "./render.js";

const PINNED_SLACK_PX = 80;
const THINKING_TICK_MS = 250;

export function newReply(id, model) {
  return {
    id,
    role: "assistant",
    status: "streaming",
    seq: 0,
    content: "",
    reasoning: "",
    model,
    usage: null,
    cost: null,
    error: null,
    reasoning_ms: null,
  };
}

export class Thread {
  // modelName(id): the name to show; onChange(): streaming may have started or ended.
  constructor({ modelName, onChange }) {
    this.modelName = modelName;
    this.onChange = onChange;
    this.list = document.getElementById("thread");
    this.scroller = document.getElementById("messages");
    this.emptyState = document.getElementById("empty-state");
    // Keys in display order: a message id, or a string for a question not yet accepted.
    // `messages` maps a key to its state, which also holds its element (`el`).
    this.order = [];
    this.messages = new Map();
    this.dirty = new Set();
    this.paintQueued = false;
    this.pinned = true;
    this.ticker = null;
    this.welcome = false;
    this.scroller.addEventListener("scroll", () => {
      const { scrollHeight, scrollTop, clientHeight } = this.scroller;
      this.pinned = scrollHeight - scrollTop - clientHeight < PINNED_SLACK_PX;
    });
  }

  reset() {
    this.order = [];
    this.messages = new Map();
    this.dirty.clear();
    this.pinned = true;
    this.list.replaceChildren();
  }

  get(key) {
    return this.messages.get(key);
  }

  shows(key) {
    return this.order.includes(key);
  }

  // The message an element inside the thread belongs to.
  messageAt(node) {
    const id = node?.closest(".message")?.dataset.id;
    return id ? this.messages.get(Number(id)) : undefined;
  }

  // Questions and replies the page adds itself -----------------------------------------------

  addQuestion(key, content, pendingNote, images = []) {
    this.messages.set(key, {
      id: null,
      key,
      role: "user",
      content,
      images,
      pending: true,
      pendingNote,
    });
    this.order.push(key);
  }

  // The server accepted the question `key`: it is message `id` now.
  settleQuestion(key, id) {
    const question = this.messages.get(key);
    const index = this.order.indexOf(key);
    this.messages.delete(key);
    if (question && !this.messages.has(id) && index >= 0) {
      question.id = id;
      question.pending = false;
      this.messages.set(id, question);
      this.order[index] = id;
    } else if (index >= 0) {
      this.order.splice(index, 1);
    }
  }

  remove(key) {
    const index = this.order.indexOf(key);
    if (index >= 0) this.order.splice(index, 1);
    this.messages.get(key)?.el?.remove();
    this.messages.delete(key);
  }

  add(message) {
    if (!this.messages.has(message.id)) this.messages.set(message.id, message);
    if (!this.order.includes(message.id)) this.order.push(message.id);
  }

  // Known but not shown: a reply whose frames arrive before the page knows where it belongs.
  track(message) {
    if (!this.messages.has(message.id)) this.messages.set(message.id, message);
    return this.messages.get(message.id);
  }

  // Remove message `id` and everything after it (an edit or a regeneration replaced them).
  truncateFrom(id) {
    const index = this.order.indexOf(id);
    if (index < 0) return;
    for (const key of this.order.splice(index)) {
      this.messages.get(key)?.el?.remove();
      this.messages.delete(key);
    }
  }

  setPendingNote(note) {
    for (const message of this.messages.values()) {
      if (message.pending && message.el) {
        message.pendingNote = note;
        paintUser(message.el, message);
      }
    }
  }

  // The server's view ------------------------------------------------------------------------

  // Merge the conversation as the server has it. A reply still streaming keeps the text built
  // from frames (at least as new as the saved text); a finished message takes the server's
  // version, which is final. With `reshape`, the server's order of messages replaces the page's.
  merge(messages, { reshape }) {
    for (const data of messages) {
      const known = this.messages.get(data.id);
      if (data.role === "assistant" && data.status === "streaming") {
        if (known) {
          known.model ??= data.model;
          known.created ??= data.created;
          continue;
        }
        // Saved text without a sequence number: the snapshot that follows a watch sets it.
        const state = { ...data, seq: -1 };
        if (state.reasoning) state.reasoningStartedAt = Date.parse(data.created) || Date.now();
        this.messages.set(data.id, state);
      } else if (known) {
        Object.assign(known, data);
        if (data.role === "assistant" && known.seq < 0) known.seq = 0;
      } else {
        this.messages.set(data.id, { ...data });
      }
    }
    if (reshape) {
      const pending = this.order.filter((key) => typeof key === "string");
      this.order = [...messages.map((data) => data.id), ...pending];
      for (const key of [...this.messages.keys()]) {
        if (typeof key !== "string" && !this.order.includes(key)) this.remove(key);
      }
    }
    this.render();
  }

  // Stream frames (already checked to be for this conversation) ----------------------------

  // Returns false when the snapshot is for a reply the page does not show yet.
  snapshot(frame) {
    const message = this.track(newReply(frame.message, null));
    const now = Date.now();
    Object.assign(message, {
      content: frame.content,
      reasoning: frame.reasoning,
      seq: frame.seq,
      status: frame.status,
    });
    if (message.reasoning) message.reasoningStartedAt ??= Date.parse(message.created) || now;
    if (message.content && message.reasoning) message.answerStartedAt ??= now;
    this.schedulePaint(message);
    this.onChange();
    return this.shows(frame.message);
  }

  // Returns "ok", "gap" (a frame is missing), "new" (a reply the page did not know) or "skip".
  delta(frame) {
    let message = this.messages.get(frame.message);
    let result = "ok";
    if (!message) {
      // Without its first frame this text cannot be placed; a snapshot will bring it.
      if (frame.seq !== 1) return "skip";
      message = this.track(newReply(frame.message, null));
      result = "new";
    }
    if (message.seq < 0 || frame.seq <= message.seq) return "skip";
    if (frame.seq > message.seq + 1) return "gap";
    const now = Date.now();
    message.seq = frame.seq;
    if (frame.reasoning) {
      message.reasoning = (message.reasoning ?? "") + frame.reasoning;
      message.reasoningStartedAt ??= now;
    }
    if (frame.content) {
      message.content = (message.content ?? "") + frame.content;
      if (message.reasoning) message.answerStartedAt ??= now;
    }
    this.schedulePaint(message);
    return result;
  }

  // The caller reads the conversation again after every `done`. When text frames of this reply
  // were missed (its `seq` is past the page's), the reply stays "streaming" until that read
  // brings the saved text: a finished reply is never shown without its text.
  done(frame) {
    const message = this.messages.get(frame.message);
    if (message) {
      const missedText = typeof frame.seq === "number" && (message.seq ?? 0) < frame.seq;
      Object.assign(message, {
        status: missedText ? message.status : frame.status,
        usage: frame.usage,
        cost: frame.cost,
        reasoning_ms: frame.reasoning_ms,
        error: frame.error ?? null,
      });
      this.schedulePaint(message);
    }
    this.onChange();
  }

  // True when a reply the page thinks is streaming is not among the server's `streaming` ids.
  missedAnEnd(streamingIds) {
    const inFlight = new Set(streamingIds);
    return [...this.messages.values()].some(
      (message) => message.status === "streaming" && message.id && !inFlight.has(message.id),
    );
  }

  streamingReplies() {
    return this.order
      .map((key) => this.messages.get(key))
      .filter((message) => message?.role === "assistant" && message.status === "streaming");
  }

  isBusy() {
    return this.order.some((key) => {
      const message = this.messages.get(key);
      return message?.pending || (message?.role === "assistant" && message.status === "streaming");
    });
  }

  // Drawing ----------------------------------------------------------------------------------

  render() {
    const nodes = [];
    const last = this.order.at(-1);
    for (const key of this.order) {
      const message = this.messages.get(key);
      if (!message) continue;
      message.el ??= message.role === "user" ? userElement(message) : replyElement(message);
      message.isLast = key === last;
      this.paint(message);
      nodes.push(message.el);
    }
    // Move only what changed place, so focus inside a message (an edit box) survives.
    let cursor = this.list.firstChild;
    for (const node of nodes) {
      if (node === cursor) {
        cursor = cursor.nextSibling;
      } else {
        this.list.insertBefore(node, cursor);
      }
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
    this.emptyState.hidden = !this.welcome || nodes.length > 0;
    this.keepPinned();
  }

  // The welcome text shows for a new chat until its first message.
  setWelcome(show) {
    this.welcome = show;
    this.emptyState.hidden = !show || this.order.length > 0;
  }

  paint(message) {
    if (!message.el) return;
    const busy = this.isBusy();
    if (message.role === "user") {
      paintUser(message.el, message, { busy });
    } else {
      paintReply(message.el, message, {
        modelName: this.modelName(message.model),
        isLast: message.isLast,
        busy,
      });
    }
  }

  // Deltas can come faster than frames are drawn: re-render at most once per animation frame.
  schedulePaint(message) {
    if (!message) return;
    this.dirty.add(message);
    if (this.paintQueued) return;
    this.paintQueued = true;
    requestAnimationFrame(() => {
      this.paintQueued = false;
      for (const dirty of this.dirty) if (dirty.el?.isConnected) this.paint(dirty);
      this.dirty.clear();
      this.keepPinned();
      this.tickWhileThinking();
    });
  }

  // The "Thinking… 3.2 s" clock runs while some reply is thinking.
  tickWhileThinking() {
    const thinking = [...this.messages.values()].some(
      (message) => message.status === "streaming" && message.reasoning && !message.content,
    );
    if (thinking && !this.ticker) {
      this.ticker = setInterval(() => {
        for (const message of this.messages.values()) {
          if (message.status === "streaming" && message.reasoning) this.paint(message);
        }
        this.tickWhileThinking();
      }, THINKING_TICK_MS);
    } else if (!thinking && this.ticker) {
      clearInterval(this.ticker);
      this.ticker = null;
    }
  }

  keepPinned() {
    if (this.pinned) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  scrollToEnd() {
    this.pinned = true;
    this.keepPinned();
  }
}
