// The open conversation's messages as DOM (#thread): draws the MessageList (messages.js) and
// keeps the view pinned to the end while new text arrives. Each message's element is kept
// here, by message; render.js paints one.

import { paintReply, paintUser, replyElement, userElement } from "./render.js";

const PINNED_SLACK_PX = 80;
const THINKING_TICK_MS = 250;

export class Thread {
  // messages: the MessageList drawn; modelName(id): the name to show.
  constructor({ messages, modelName }) {
    this.messages = messages;
    this.modelName = modelName;
    this.list = document.getElementById("thread");
    this.scroller = document.getElementById("messages");
    this.emptyState = document.getElementById("empty-state");
    // message state -> its element, made on first render.
    this.elements = new WeakMap();
    // The last message shown (its reply may offer to regenerate).
    this.last = undefined;
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

  // The list was reset for another conversation: nothing of the old one stays on screen.
  reset() {
    this.dirty.clear();
    this.pinned = true;
    this.list.replaceChildren();
  }

  // The element of message `key` (an id, or a pending question's key), if it was drawn.
  element(key) {
    const message = this.messages.get(key);
    return message ? this.elements.get(message) : undefined;
  }

  // The message an element inside the thread belongs to.
  messageAt(node) {
    const id = node?.closest(".message")?.dataset.id;
    return id ? this.messages.get(Number(id)) : undefined;
  }

  setPendingNote(note) {
    for (const message of this.messages.values()) {
      const node = this.elements.get(message);
      if (message.pending && node) {
        message.pendingNote = note;
        paintUser(node, message);
      }
    }
  }

  render() {
    const nodes = [];
    const order = this.messages.order;
    this.last = this.messages.get(order.at(-1));
    for (const key of order) {
      const message = this.messages.get(key);
      if (!message) continue;
      let node = this.elements.get(message);
      if (!node) {
        node = message.role === "user" ? userElement(message) : replyElement(message);
        this.elements.set(message, node);
      }
      this.paint(message);
      nodes.push(node);
    }
    // Move only what changed place, so focus inside a message (an edit box) survives. What is
    // no longer in the list (removed, replaced by an edit) leaves the page here.
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
    this.emptyState.hidden = !show || this.messages.order.length > 0;
  }

  paint(message) {
    const node = this.elements.get(message);
    if (!node) return;
    const busy = this.messages.isBusy();
    if (message.role === "user") {
      paintUser(node, message, { busy });
    } else {
      paintReply(node, message, {
        modelName: this.modelName(message.model),
        isLast: message === this.last,
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
      for (const dirty of this.dirty) {
        if (this.elements.get(dirty)?.isConnected) this.paint(dirty);
      }
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
