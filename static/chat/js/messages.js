// The open conversation's messages as data: their order, their state, and how stream frames
// change it. No DOM: the thread (thread.js) draws them, told through two callbacks.
//
// A reply's text is built from `delta` frames numbered by `seq`. A `snapshot` replaces the text
// and sets `seq`; deltas at or below it are already in the text and are skipped, and a delta that
// skips a number is a gap (the caller asks for a fresh snapshot). Nothing is appended that cannot
// be placed, so text is never doubled; `done` and a re-read from the server correct the rest.

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

export class MessageList {
  // onUpdate(message): a frame changed this message's text or state (draw it again soon);
  // onChange(): streaming may have started or ended.
  constructor({ onUpdate, onChange }) {
    this.onUpdate = onUpdate;
    this.onChange = onChange;
    // Keys in display order: a message id, or a string for a question not yet accepted.
    // `messages` maps a key to its state.
    this.order = [];
    this.messages = new Map();
  }

  reset() {
    this.order = [];
    this.messages = new Map();
  }

  get(key) {
    return this.messages.get(key);
  }

  values() {
    return this.messages.values();
  }

  shows(key) {
    return this.order.includes(key);
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
    for (const key of this.order.splice(index)) this.messages.delete(key);
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
    this.onUpdate(message);
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
    this.onUpdate(message);
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
      this.onUpdate(message);
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
}
