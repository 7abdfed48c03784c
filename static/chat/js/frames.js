// The frames the server sends over the websocket (docs/protocol.md), and what each changes in
// the session (session.js): requests accepted or refused, replies started, their text (deltas,
// and snapshots, which may come in pieces), their ends, titles, and what the socket watches.
// No DOM: what changed is reported through the session's hooks.

import { describeError } from "./format.js";
import { newReply } from "./messages.js";

export class FrameHandler {
  constructor(session) {
    this.session = session;
    // Snapshots still arriving in pieces, by reply.
    this.partialSnapshots = new Map();
  }

  handle(frame) {
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

  // After a reconnection the pieces of a snapshot cut short will never be completed.
  forgetPieces() {
    this.partialSnapshots.clear();
  }

  isHere(frame) {
    return frame.conversation === this.session.conversationId;
  }

  onAccepted(frame) {
    const session = this.session;
    const request = session.pending.get(frame.request_id);
    if (!request) return;
    session.pending.delete(frame.request_id);
    clearTimeout(request.timer);
    const here = request.view === session.view;
    if (request.kind === "send" && request.conversation === null) {
      session.created(frame.conversation, request, here);
    } else {
      session.hooks.onActivity(frame.conversation);
    }
    if (!here) return;
    session.shape += 1;
    const messages = session.messages;
    if (request.kind === "send") {
      messages.settleQuestion(request.key, frame.user_message);
    } else if (request.kind === "edit") {
      messages.truncateFrom(request.message);
      // The edited question keeps its images (the server copies them).
      messages.add({
        id: frame.user_message,
        role: "user",
        content: request.content,
        images: request.images ?? [],
      });
    } else if (request.kind === "regenerate") {
      messages.truncateFrom(request.message);
    }
    messages.add(messages.get(frame.message) ?? newReply(frame.message, request.model));
    if (request.stopRequested) session.socket.send({ type: "stop", message: frame.message });
    session.hooks.onMessages({ scroll: true });
  }

  onStarted(frame) {
    const session = this.session;
    session.hooks.onActivity(frame.conversation);
    if (!this.isHere(frame)) return;
    const known = session.messages.get(frame.message);
    if (known) {
      known.model ??= frame.model;
      return;
    }
    // Another tab (or a request whose answer was lost) started this reply. Its frames from the
    // first delta on reach this page; the conversation's new shape (what the reply answers,
    // what it replaced) is read from the server.
    session.messages.track(newReply(frame.message, frame.model));
    session.shape += 1;
    session.refresh();
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
    const session = this.session;
    if (!this.isHere(frame)) return;
    session.resyncing = false;
    const shown = session.messages.snapshot(frame);
    if (!shown && !session.refreshing) session.refresh();
  }

  onDelta(frame) {
    const session = this.session;
    if (!this.isHere(frame)) return;
    const result = session.messages.delta(frame);
    if (result === "gap") session.resync();
    else if (result === "new" && !session.refreshing) session.refresh();
  }

  // The server let go of a conversation this socket watched longest (its watch limit).
  onUnwatched(frame) {
    const session = this.session;
    session.watched = session.watched.filter((other) => other !== frame.conversation);
  }

  onDone(frame) {
    const session = this.session;
    session.hooks.onActivity(frame.conversation);
    if (!this.isHere(frame)) return;
    session.messages.done(frame);
    // The total cost changed; and if frames were missed, the saved text is the whole reply.
    session.refresh();
  }

  onTitle(frame) {
    const session = this.session;
    const here = this.isHere(frame);
    if (here && session.conversation) session.conversation.title = frame.title;
    session.hooks.onTitle(frame.conversation, frame.title, here);
    // The title was billed too: the running total changed.
    if (here) session.refresh();
  }

  onWatching(frame) {
    const session = this.session;
    if (!this.isHere(frame)) return;
    session.resyncing = false;
    // A reply that ended while this page was away, its `done` unseen: read how it ended.
    if (session.messages.missedAnEnd(frame.streaming)) session.refresh();
  }

  onError(frame) {
    const session = this.session;
    const text = describeError(frame.code, frame.message);
    const request = frame.request_id ? session.pending.get(frame.request_id) : null;
    if (request) {
      this.refused(frame.request_id, request, text);
    } else if (frame.code === "not_found" && session.conversationId !== null) {
      // A watch or stop for a conversation deleted elsewhere: the re-read tells.
      session.refresh();
    } else {
      session.hooks.onError(text);
    }
    if (frame.code === "model_unavailable") session.hooks.onModelUnavailable();
  }

  // A request the server turned down: nothing changed there, so the page undoes what it showed.
  refused(requestId, request, text) {
    const session = this.session;
    session.pending.delete(requestId);
    clearTimeout(request.timer);
    if (request.view !== session.view) return;
    if (request.kind === "send") session.messages.remove(request.key);
    session.hooks.onRefused(request, text);
  }
}
