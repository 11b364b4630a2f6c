// nilecast JavaScript client: an ES module with no build step, for browsers and Node 18+.
//
// It speaks nilecast's native protocol (docs/protocol.md, `/ws`) and keeps the seed
// client's API:
//
//   import { NilecastClient } from "./nilecast.js";
//   const client = new NilecastClient({ url: "http://localhost:4001", token });
//   await client.connect();
//   client.on("inventory:update", (change) => render(change));
//   await client.subscribeToInventory({ categories: ["electronics"] });
//   const summary = await client.requestData("inventory_summary");
//
// What it does for the application:
// - reconnects after a lost connection, with exponential backoff and jitter, up to
//   `maxReconnectAttempts`;
// - queues what the application sends while offline and sends it once connected;
// - after a reconnect, subscribes again with `sinceSeq` set to the last change seen on
//   each namespace, and drops any change it has already delivered, so the application
//   sees every change once, in order (when the server's retention, or its change log,
//   still reaches back; a `gap` event says when it does not).
//
// In Node before 22 pass a WebSocket implementation: `new NilecastClient({ url,
// WebSocket: (await import("ws")).default })`.

const NAMESPACES = ["/", "/inventory", "/orders", "/dashboard", "/customer", "/notifications"];

/** The change events, by namespace: their payload carries a `seq`. */
const CHANGE_EVENTS = {
  "/inventory": ["inventory:update"],
  "/orders": ["order:update", "order:tracking"],
  "/customer": ["customer:activity"],
  "/notifications": ["notification"],
};

export class NilecastError extends Error {
  constructor(code, message, details) {
    super(message);
    this.name = "NilecastError";
    this.code = code;
    this.details = details;
  }
}

export class NilecastClient {
  /**
   * @param {object} options
   * @param {string} options.url  http(s) or ws(s) URL of the server (`http://localhost:4001`).
   * @param {string} [options.token]  JWT, sent at the upgrade.
   * @param {string} [options.tenant]  tenant, for servers running without auth.
   * @param {boolean} [options.autoReconnect=true]
   * @param {number} [options.maxReconnectAttempts=Infinity]
   * @param {number} [options.reconnectDelayMs=500]  first delay; doubles up to the max.
   * @param {number} [options.maxReconnectDelayMs=10000]
   * @param {number} [options.requestTimeoutMs=15000]
   * @param {Function} [options.WebSocket]  WebSocket constructor (default: the global one).
   */
  constructor(options = {}) {
    if (!options.url) throw new TypeError("NilecastClient needs { url }");
    this.options = {
      autoReconnect: true,
      maxReconnectAttempts: Infinity,
      reconnectDelayMs: 500,
      maxReconnectDelayMs: 10000,
      requestTimeoutMs: 15000,
      ...options,
    };
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) {
      throw new TypeError("no WebSocket: pass { WebSocket } (e.g. the `ws` package) in Node before 22");
    }
    this.ws = null;
    this.connected = false;
    this.connectionId = null;
    this.handlers = new Map();
    this.queue = [];
    this.pending = new Map();
    this.nextAck = 1;
    this.subscriptions = new Set();
    this.lastSeq = new Map();
    this.attempts = 0;
    this.closedByUser = false;
    this.reconnectTimer = null;
  }

  /** The WebSocket URL for the native protocol. */
  endpoint() {
    const base = this.options.url.replace(/^http/, "ws").replace(/\/+$/, "");
    const query = new URLSearchParams();
    if (this.options.token) query.set("token", this.options.token);
    if (this.options.tenant) query.set("tenant", this.options.tenant);
    const q = query.toString();
    return `${base}/ws${q ? `?${q}` : ""}`;
  }

  /** Opens the connection; resolves once the server has greeted it. */
  connect() {
    this.closedByUser = false;
    if (this.connected) return Promise.resolve(this.established);
    if (this.connecting) return this.connecting;
    this.connecting = new Promise((resolve, reject) => {
      const ws = new this.WebSocket(this.endpoint());
      this.ws = ws;
      let greeted = false;
      ws.onmessage = (message) => {
        let frame;
        try {
          frame = JSON.parse(typeof message.data === "string" ? message.data : String(message.data));
        } catch {
          return;
        }
        if (!greeted && frame.event === "connection:established") {
          greeted = true;
          this.onOpen(frame.data);
          resolve(frame.data);
        }
        this.onFrame(frame);
      };
      ws.onclose = (event) => {
        const wasConnected = this.connected;
        this.connected = false;
        this.connecting = null;
        this.ws = null;
        this.failPending(new NilecastError("disconnected", "the connection closed"));
        if (!greeted) reject(new NilecastError("connect_failed", `could not connect (close ${event.code})`));
        if (wasConnected) this.emit("disconnected", { code: event.code, reason: event.reason });
        this.scheduleReconnect();
      };
      ws.onerror = () => {};
    });
    return this.connecting;
  }

  onOpen(established) {
    this.connected = true;
    this.connecting = null;
    this.attempts = 0;
    this.connectionId = established.connectionId;
    this.established = established;
    // Subscriptions first (resuming each namespace after its last seq), then what was
    // queued while offline.
    for (const sub of this.subscriptions) this.resubscribe(sub);
    const queued = this.queue;
    this.queue = [];
    for (const text of queued) this.ws.send(text);
    this.emit("connected", established);
  }

  scheduleReconnect() {
    if (this.closedByUser || !this.options.autoReconnect) return;
    if (this.attempts >= this.options.maxReconnectAttempts) {
      this.emit("reconnect_failed", { attempts: this.attempts });
      return;
    }
    const { reconnectDelayMs, maxReconnectDelayMs } = this.options;
    const ceiling = Math.min(maxReconnectDelayMs, reconnectDelayMs * 2 ** this.attempts);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempts += 1;
    this.emit("reconnecting", { attempt: this.attempts, delayMs: Math.round(delay) });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.connect().catch(() => {});
    }, delay);
  }

  /** Closes the connection for good (no reconnect). */
  disconnect() {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    this.queue = [];
    if (this.ws) this.ws.close(1000);
    this.connected = false;
  }

  on(event, handler) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(handler);
    return this;
  }

  /** Calls `handler(event, data, ns)` for every event the server sends. */
  onAny(handler) {
    this.anyHandlers = this.anyHandlers || new Set();
    this.anyHandlers.add(handler);
    return this;
  }

  offAny(handler) {
    if (this.anyHandlers) this.anyHandlers.delete(handler);
    return this;
  }

  off(event, handler) {
    const set = this.handlers.get(event);
    if (set) handler ? set.delete(handler) : set.clear();
    return this;
  }

  emit(event, data, ns) {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(data, ns);
      } catch (e) {
        // A failing handler must not break the client or the other handlers.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  onFrame(frame) {
    const ns = frame.ns || "/";
    if (frame.ack != null && frame.event == null) {
      const waiter = this.pending.get(frame.ack);
      if (!waiter) return;
      this.pending.delete(frame.ack);
      clearTimeout(waiter.timer);
      if (frame.data && frame.data.error) {
        const e = frame.data.error;
        waiter.reject(new NilecastError(e.code, e.message, e));
      } else {
        waiter.resolve(frame.data);
      }
      return;
    }
    const changes = CHANGE_EVENTS[ns];
    if (changes && changes.includes(frame.event) && frame.data && typeof frame.data.seq === "number") {
      // Each change once: a resumed subscription replays only what is newer, but a
      // change may also be in flight across a reconnect.
      const last = this.lastSeq.get(ns) || 0;
      if (frame.data.seq <= last) return;
      this.lastSeq.set(ns, frame.data.seq);
    }
    if (this.anyHandlers) {
      for (const handler of [...this.anyHandlers]) handler(frame.event, frame.data, ns);
    }
    this.emit(frame.event, frame.data, ns);
  }

  failPending(error) {
    for (const [, waiter] of this.pending) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
    this.pending.clear();
  }

  /** Sends a request and resolves with its ack reply; queued while offline. */
  request(ns, event, data = {}) {
    return new Promise((resolve, reject) => {
      const ack = this.nextAck++;
      const text = JSON.stringify({ ns, event, data, ack });
      const timer = setTimeout(() => {
        this.pending.delete(ack);
        reject(new NilecastError("timeout", `${event} got no reply`));
      }, this.options.requestTimeoutMs);
      this.pending.set(ack, { resolve, reject, timer });
      this.send(text);
    });
  }

  /** Sends a frame now, or when connected. */
  send(text) {
    if (this.connected && this.ws) this.ws.send(text);
    else this.queue.push(text);
  }

  /**
   * Subscribes (now, or once connected) and resolves with the first reply
   * `{subscriptionId, filters, replayed, gap, unsubscribe()}`. The subscription is
   * renewed after every reconnect.
   */
  subscribe(ns, event, filters) {
    const sub = { ns, event, filters: { ...filters }, id: null, first: null };
    this.subscriptions.add(sub);
    return new Promise((resolve, reject) => {
      sub.first = { resolve, reject };
      if (this.connected) this.resubscribe(sub);
    });
  }

  resubscribe(sub) {
    const since = this.lastSeq.get(sub.ns);
    const filters = since ? { ...sub.filters, sinceSeq: since } : sub.filters;
    this.request(sub.ns, sub.event, filters).then(
      (reply) => {
        sub.id = reply.subscriptionId;
        if (sub.first) {
          sub.first.resolve({ ...reply, unsubscribe: () => this.unsubscribe(sub) });
          sub.first = null;
        }
        if (reply.gap && since) this.emit("gap", { ns: sub.ns, since });
      },
      (error) => {
        if (sub.first && error.code !== "disconnected") {
          // Refused (a bad filter, no permission): it will not be renewed either.
          this.subscriptions.delete(sub);
          sub.first.reject(error);
          sub.first = null;
        }
        this.emit("error", error);
      },
    );
  }

  unsubscribe(sub) {
    this.subscriptions.delete(sub);
    const prefix = sub.ns.slice(1);
    if (!this.connected || !sub.id) return Promise.resolve();
    return this.request(sub.ns, `${prefix}:unsubscribe`, { subscriptionId: sub.id });
  }

  subscribeToInventory(filters = {}) {
    return this.subscribe("/inventory", "inventory:subscribe", filters);
  }

  subscribeToOrders(filters = {}) {
    return this.subscribe("/orders", "orders:subscribe", filters);
  }

  subscribeToDashboard(options = {}) {
    return this.subscribe("/dashboard", "dashboard:subscribe", options);
  }

  subscribeToCustomer(filters = {}) {
    return this.subscribe("/customer", "customer:subscribe", filters);
  }

  subscribeToNotifications(filters = {}) {
    return this.subscribe("/notifications", "notifications:subscribe", filters);
  }

  /** `data:request`: resolves with the answer's `data`. */
  requestData(dataType, parameters = {}) {
    return this.request("/", "data:request", { dataType, parameters }).then((reply) => reply.data);
  }

  /** `orders:track`: follows the order; resolves with `{orderId, tracking}`. */
  trackOrder(orderId) {
    return this.request("/orders", "orders:track", { orderId });
  }

  /** `inventory:get-current`: resolves with `{count, items}`. */
  getCurrentInventory(filters = {}) {
    return this.request("/inventory", "inventory:get-current", { filters });
  }
}

/** The seed's name for the client: its snippets import `WebSocketRealTimeClient`. */
export const WebSocketRealTimeClient = NilecastClient;

/** Small helpers the seed's client utility exported beside the client. */
export const WebSocketUtils = {
  /** Whether a stock row is at or below its threshold (default 10). */
  isLowStock(item, threshold = 10) {
    return Number(item.quantity) <= (item.lowStockThreshold ?? threshold);
  },
  /** The last change seq the client delivered on a namespace (0 when none). */
  lastSeq(client, ns) {
    return client.lastSeq.get(ns) || 0;
  },
};

export { NAMESPACES };
export default NilecastClient;
