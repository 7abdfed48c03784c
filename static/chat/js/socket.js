// The chat websocket: reconnects with exponential backoff and jitter, reports its state, and
// resends frames the server had not acknowledged when the connection dropped. Resending is safe:
// the server answers a repeated request_id with the original `accepted` and starts nothing new.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
// After this many failed attempts in a row the indicator says "offline" (it keeps trying).
const OFFLINE_AFTER = 5;
// Close code the server uses for "not logged in" (docs/protocol.md). Any other close (4408: we
// fell behind on acks, 4429: too many frames, or a network failure) is answered by reconnecting.
const UNAUTHORIZED = 4401;
// A frame larger than the server takes (RFC 6455 "message too big"): the server closes the
// socket with its limit as the reason. That frame is never sent again.
const TOO_BIG = 1009;
// Flow control: tell the server how much we have read, at least every 64 KiB and every second
// while frames arrive, or it closes a socket it thinks stopped reading.
const ACK_EVERY_CHARS = 32 * 1024;
const ACK_WITHIN_MS = 500;

// The server counts characters (code points); a JS string's length counts UTF-16 units, two
// for an emoji. Counting high surrogates converts without copying the text.
function characters(text) {
  let pairs = 0;
  for (let i = 0; i < text.length; i += 1) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff) pairs += 1;
  }
  return text.length - pairs;
}

export class ChatSocket {
  constructor({ path, onFrame, onState, onOpen, onUnauthorized, onRefused = () => {} }) {
    this.path = path;
    this.onFrame = onFrame;
    this.onState = onState;
    this.onOpen = onOpen;
    this.onUnauthorized = onUnauthorized;
    this.onRefused = onRefused;
    // The last frame written: the one a 1009 close refers to.
    this.lastSent = null;
    this.ws = null;
    this.state = "connecting";
    this.failures = 0;
    this.timer = null;
    this.closing = false;
    // request_id -> frame, until the server answers `accepted` or `error` for it.
    this.unacked = new Map();
    // Frames without a request_id (stop, watch) given while disconnected.
    this.queue = [];
    // Characters of frames read on this connection, and the count last acknowledged.
    this.received = 0;
    this.acked = 0;
    this.ackTimer = null;
    window.addEventListener("online", () => this.reconnectNow());
    window.addEventListener("offline", () => {
      if (this.state !== "open") this.setState("offline");
    });
    // A page being left must not start reconnecting (or flash "reconnecting") on its way out.
    window.addEventListener("pagehide", () => {
      this.closing = true;
      this.ws?.close(1000);
    });
  }

  get url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${this.path}`;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.received = 0;
    this.acked = 0;
    ws.addEventListener("open", () => {
      if (ws !== this.ws) return;
      this.failures = 0;
      this.setState("open");
      this.onOpen();
      for (const frame of [...this.unacked.values(), ...this.queue.splice(0)]) {
        this.lastSent = frame;
        ws.send(JSON.stringify(frame));
      }
    });
    ws.addEventListener("message", (event) => {
      if (ws !== this.ws) return;
      this.received += characters(event.data);
      this.scheduleAck();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.request_id && (frame.type === "accepted" || frame.type === "error")) {
        this.unacked.delete(frame.request_id);
      }
      this.onFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (event.code === UNAUTHORIZED) {
        this.setState("offline");
        this.onUnauthorized();
        return;
      }
      if (event.code === TOO_BIG && this.lastSent !== null) {
        const refused = this.lastSent;
        if (refused.request_id) this.unacked.delete(refused.request_id);
        this.queue = this.queue.filter((frame) => frame !== refused);
        this.onRefused(refused, event.reason);
      }
      this.lastSent = null;
      if (!this.closing) this.scheduleReconnect();
    });
  }

  scheduleAck() {
    if (this.received - this.acked >= ACK_EVERY_CHARS) {
      this.ack();
    } else if (this.ackTimer === null) {
      this.ackTimer = setTimeout(() => this.ack(), ACK_WITHIN_MS);
    }
  }

  ack() {
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
    if (!this.isOpen || this.received === this.acked) return;
    this.acked = this.received;
    this.ws.send(JSON.stringify({ type: "ack", received: this.received }));
  }

  scheduleReconnect() {
    this.failures += 1;
    const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (this.failures - 1));
    // "Equal jitter": never immediately, and tabs that lost the same server spread out.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    const offline = !navigator.onLine || this.failures > OFFLINE_AFTER;
    this.setState(offline ? "offline" : "reconnecting");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.ws !== null || this.closing) return;
    this.failures = 0;
    this.connect();
  }

  send(frame) {
    if (frame.request_id) this.unacked.set(frame.request_id, frame);
    if (this.isOpen) {
      this.lastSent = frame;
      this.ws.send(JSON.stringify(frame));
    } else if (!frame.request_id) {
      this.queue.push(frame);
    }
  }

  // Drop a queued frame that no longer matters (a watch for a conversation left meanwhile).
  forget(predicate) {
    this.queue = this.queue.filter((frame) => !predicate(frame));
  }
}
