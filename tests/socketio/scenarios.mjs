// socket.io-client (the real npm package, v4) against nilecast's /socket.io/ endpoint.
// `node tests/socketio/scenarios.mjs <scenario> <url> [arg]` prints `ok <scenario>` and
// exits 0, or prints what went wrong and exits 1. tests/socketio.rs runs each scenario
// against a server of its own. The client code is the seed README's, with the URL and
// `transports: ["websocket"]` added (the seed's relative `io('/inventory')` needs a page).
import { io } from "socket.io-client";

const [scenario, url, arg] = process.argv.slice(2);
const opts = { transports: ["websocket"] };
const TIMEOUT_MS = 20000;

function fail(message) {
  console.log(`FAIL ${scenario}: ${message}`);
  process.exit(1);
}
setTimeout(() => fail(`timed out after ${TIMEOUT_MS} ms; still waiting for: ${[...pending].join(", ")}`), TIMEOUT_MS).unref();

// What the scenario still waits for; done when empty.
const pending = new Set();
let finish;
const finished = new Promise((resolve) => (finish = resolve));
function expect(name) {
  pending.add(name);
}
function seen(name) {
  if (pending.delete(name) && pending.size === 0) finish();
}
function check(condition, message) {
  if (!condition) fail(message);
}

async function publish(changes, to = url) {
  const res = await fetch(`${to}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(changes),
  });
  check(res.ok, `POST /publish answered ${res.status}`);
  return (await res.json()).seqs;
}

function connected(socket) {
  return new Promise((resolve, reject) => {
    if (socket.connected) return resolve();
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
}

const scenarios = {
  // Every namespace, with the seed's calls as they are.
  async seed() {
    for (const e of ["established", "auth:success", "data:response", "data ack", "inventory:update",
      "inventory:low-stock", "inventory:current", "order:update", "order:tracking", "dashboard:data",
      "dashboard:metrics:live", "customer:activity", "notification", "subscribe ack"]) expect(e);

    const socket = io(url, opts);
    socket.on("connection:established", (data) => {
      check(typeof data.connectionId === "string", "connectionId");
      seen("established");
    });
    socket.emit("auth:login", { token: "jwt-token" });
    socket.on("auth:success", (data) => {
      check(data.tenantId === "default", `auth:success ${JSON.stringify(data)}`);
      seen("auth:success");
    });
    socket.emit("data:request", { dataType: "inventory_summary", parameters: { limit: 100 } });
    socket.on("data:response", (data) => {
      check(data.dataType === "inventory_summary" && data.data.totalProducts > 0, `data:response ${JSON.stringify(data)}`);
      seen("data:response");
    });
    // An acknowledgement: the reply comes to the callback.
    socket.emit("data:request", { dataType: "order_stats" }, (reply) => {
      check(reply.dataType === "order_stats", `data:request ack ${JSON.stringify(reply)}`);
      seen("data ack");
    });

    const inventorySocket = io(`${url}/inventory`, opts);
    inventorySocket.emit("inventory:subscribe", {
      productIds: ["product-123", "product-456"],
      warehouseIds: ["warehouse-1"],
      categories: ["electronics"],
      lowStockOnly: true,
    });
    inventorySocket.on("inventory:update", (data) => {
      check(data.data.productId === "product-123" && data.data.quantity === 3, `inventory:update ${JSON.stringify(data)}`);
      seen("inventory:update");
    });
    inventorySocket.on("inventory:low-stock", (alert) => {
      check(alert.type === "low_stock" && alert.data.productId === "product-123", `low-stock ${JSON.stringify(alert)}`);
      seen("inventory:low-stock");
    });
    inventorySocket.emit("inventory:get-current", { filters: { category: "electronics" } });
    inventorySocket.on("inventory:current", (data) => {
      check(Array.isArray(data.items) && data.items.length > 0, `inventory:current ${JSON.stringify(data).slice(0, 200)}`);
      check(data.items.every((i) => i.category === "electronics"), "inventory:current filtered by category");
      seen("inventory:current");
    });
    inventorySocket.emit("inventory:subscribe", { productIds: ["product-999"] }, (reply) => {
      check(reply.subscriptionId && reply.replayed === 0, `subscribe ack ${JSON.stringify(reply)}`);
      seen("subscribe ack");
    });

    const ordersSocket = io(`${url}/orders`, opts);
    ordersSocket.emit("orders:subscribe", {
      orderIds: ["order-123"],
      customerId: "customer-456",
      status: "shipped",
      trackingEnabled: true,
    });
    ordersSocket.on("order:update", (data) => {
      check(data.data.orderId === "order-123" && data.data.status === "shipped", `order:update ${JSON.stringify(data)}`);
      seen("order:update");
    });
    ordersSocket.on("order:tracking", (data) => {
      if (data.data.location === "Lyon") seen("order:tracking");
    });
    ordersSocket.emit("orders:track", { orderId: "order-123" });

    const dashboardSocket = io(`${url}/dashboard`, opts);
    dashboardSocket.emit("dashboard:subscribe", {
      dashboardId: "main-dashboard",
      widgets: ["inventory-summary", "order-stats", "customer-activity"],
      metricsInterval: 5000,
    });
    dashboardSocket.on("dashboard:data", (data) => {
      check(data.dashboardId === "main-dashboard", `dashboard:data ${JSON.stringify(data).slice(0, 200)}`);
      seen("dashboard:data");
    });
    dashboardSocket.on("dashboard:metrics:live", () => seen("dashboard:metrics:live"));

    const customerSocket = io(`${url}/customer`, opts);
    customerSocket.emit("customer:subscribe", {
      customerId: "customer-123",
      activityTypes: ["login", "purchase", "browse"],
      realtimeTracking: true,
    });
    customerSocket.on("customer:activity", (activity) => {
      check(activity.data.customerId === "customer-123", `customer:activity ${JSON.stringify(activity)}`);
      seen("customer:activity");
    });

    const notificationsSocket = io(`${url}/notifications`, opts);
    notificationsSocket.emit("notifications:subscribe", {
      types: ["low_stock", "order_update", "system_alert"],
      priority: "high",
    });
    notificationsSocket.on("notification", (notification) => {
      check(notification.priority === "high" || notification.priority === "critical", `notification ${JSON.stringify(notification)}`);
      if (notification.type === "low_stock") seen("notification");
    });

    const sockets = [socket, inventorySocket, ordersSocket, dashboardSocket, customerSocket, notificationsSocket];
    await Promise.all(sockets.map(connected));
    // The subscribes were sent before the connections were up (the client buffers
    // them); a request behind them on each namespace proves they have been handled.
    await inventorySocket.emitWithAck("inventory:get-current", { filters: {} });
    await ordersSocket.emitWithAck("orders:track", { orderId: "order-123" });
    await customerSocket.emitWithAck("customer:subscribe", { customerId: "customer-999" });
    await notificationsSocket.emitWithAck("notifications:subscribe", { types: ["system_alert"] });
    await publish([
      { dataType: "inventory", data: { productId: "product-123", warehouseId: "warehouse-1", category: "electronics", quantity: 3 } },
      { dataType: "orders", data: { orderId: "order-123", customerId: "customer-456", status: "shipped", total: 10 } },
      { dataType: "order_tracking", data: { orderId: "order-123", customerId: "customer-456", status: "in_transit", location: "Lyon" } },
      { dataType: "customer_activity", data: { customerId: "customer-123", activityType: "login" } },
    ]);
    await finished;
    sockets.forEach((s) => s.disconnect());
  },

  // With auth on: a bad token is refused with connect_error; a good one connects.
  async auth() {
    const refused = io(url, { ...opts, auth: { token: "not-a-jwt" }, reconnection: false });
    const error = await new Promise((resolve) => {
      refused.on("connect_error", resolve);
      refused.on("connect", () => fail("a bad token connected"));
    });
    check(/token/.test(error.message), `connect_error message: ${error.message}`);
    check(error.data && error.data.code === "unauthorized", `connect_error data: ${JSON.stringify(error.data)}`);
    const none = io(`${url}/inventory`, { ...opts, reconnection: false, forceNew: true });
    const error2 = await new Promise((resolve) => none.on("connect_error", resolve));
    check(error2.data && error2.data.code === "unauthorized", `no token: ${JSON.stringify(error2.data)}`);

    const good = io(url, { ...opts, auth: { token: arg }, forceNew: true });
    const established = await new Promise((resolve) => good.on("connection:established", resolve));
    check(established.authenticated === true, `established ${JSON.stringify(established)}`);
    const inv = io(`${url}/inventory`, { ...opts, auth: { token: arg }, forceNew: true });
    const reply = await inv.emitWithAck("inventory:subscribe", {});
    check(reply.subscriptionId, `subscribe with a token: ${JSON.stringify(reply)}`);
    good.disconnect();
    inv.disconnect();
  },

  // Connection state recovery: the transport is cut, changes are published meanwhile,
  // the client comes back with recovered = true and gets each missed change once.
  async recovery() {
    const inv = io(`${url}/inventory`, { ...opts, reconnectionDelay: 200, reconnectionDelayMax: 500 });
    const got = [];
    inv.on("inventory:update", (p, offset) => {
      check(offset === String(p.seq), `offset ${offset} for seq ${p.seq}`);
      got.push(p.seq);
    });
    await connected(inv);
    check(inv.recovered === false, "a first connection is not recovered");
    await inv.emitWithAck("inventory:subscribe", { productIds: ["rec-1"] });
    const before = await publish([{ dataType: "inventory", data: { productId: "rec-1", warehouseId: "w", quantity: 100 } }]);
    while (!got.includes(before[0])) await new Promise((r) => setTimeout(r, 20));

    const down = new Promise((resolve) => inv.once("disconnect", resolve));
    inv.io.engine.close();
    await down;
    const missed = await publish([1, 2, 3, 4, 5].map((i) => ({ dataType: "inventory", data: { productId: "rec-1", warehouseId: "w", quantity: 100 + i } })));
    await new Promise((resolve) => inv.once("connect", resolve));
    check(inv.recovered === true, "the reconnected socket is recovered");
    const after = await publish([{ dataType: "inventory", data: { productId: "rec-1", warehouseId: "w", quantity: 200 } }]);
    while (!got.includes(after[0])) await new Promise((r) => setTimeout(r, 20));
    const expected = [before[0], ...missed, after[0]];
    check(JSON.stringify(got) === JSON.stringify(expected), `got ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`);
    inv.disconnect();
  },

  // With a database: the server restarts (another process, as another node would be)
  // while the client is away; the client recovers there. Prints what it received.
  // Behind nginx: the test stops the node this socket is on once it prints "ready";
  // changes are published on the other node (arg); the socket reconnects through nginx
  // to the other node and is recovered there with what it missed.
  async failover() {
    const other = arg;
    const inv = io(`${url}/inventory`, { ...opts, reconnectionDelay: 200, reconnectionDelayMax: 500 });
    const got = [];
    inv.on("inventory:update", (p, offset) => {
      check(offset === String(p.seq), `offset ${offset} for seq ${p.seq}`);
      got.push(p.seq);
    });
    await connected(inv);
    await inv.emitWithAck("inventory:subscribe", { productIds: ["fo-1"] });
    const change = (q) => ({ dataType: "inventory", data: { productId: "fo-1", warehouseId: "w", quantity: q } });
    const before = await publish([change(100)], other);
    while (!got.includes(before[0])) await new Promise((r) => setTimeout(r, 20));
    const down = new Promise((resolve) => inv.once("disconnect", resolve));
    console.log("ready");
    await down;
    const back = new Promise((resolve) => inv.once("connect", resolve));
    const missed = await publish([1, 2, 3, 4, 5].map((i) => change(100 + i)), other);
    await back;
    check(inv.recovered === true, "the socket is recovered on the other node");
    const after = await publish([change(200)], other);
    while (!got.includes(after[0])) await new Promise((r) => setTimeout(r, 20));
    const expected = [before[0], ...missed, after[0]];
    check(JSON.stringify(got) === JSON.stringify(expected), `got ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`);
    inv.disconnect();
  },

  async "recovery-restart"() {
    const missed = Number(arg || 5);
    const inv = io(`${url}/inventory`, { ...opts, reconnectionDelay: 300, reconnectionDelayMax: 1000 });
    const got = [];
    inv.on("inventory:update", (p) => got.push(p.seq));
    await connected(inv);
    await inv.emitWithAck("inventory:subscribe", { productIds: ["rr-1"] });
    const before = await publish([{ dataType: "inventory", data: { productId: "rr-1", warehouseId: "w", quantity: 100 } }]);
    while (!got.includes(before[0])) await new Promise((r) => setTimeout(r, 20));
    const away = new Promise((resolve) => inv.once("disconnect", resolve));
    console.log("ready");
    await away;
    console.log("away");
    await new Promise((resolve) => inv.once("connect", resolve));
    check(inv.recovered === true, "recovered on the restarted server");
    const deadline = Date.now() + 15000;
    while (got.length < 1 + missed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    console.log(JSON.stringify({ got }));
    inv.disconnect();
  },

  // When retention no longer reaches back to the offset: a fresh session, not a
  // recovery with a hole in it.
  async "recovery-gap"() {
    const inv = io(`${url}/inventory`, { ...opts, reconnectionDelay: 200, reconnectionDelayMax: 500 });
    const got = [];
    inv.on("inventory:update", (p) => got.push(p.seq));
    await connected(inv);
    await inv.emitWithAck("inventory:subscribe", { productIds: ["gap-1"] });
    const before = await publish([{ dataType: "inventory", data: { productId: "gap-1", warehouseId: "w", quantity: 100 } }]);
    while (!got.includes(before[0])) await new Promise((r) => setTimeout(r, 20));
    const down = new Promise((resolve) => inv.once("disconnect", resolve));
    inv.io.engine.close();
    await down;
    // More changes than the server retains (REPLAY_MAX_CHANGES=5).
    await publish(Array.from({ length: 12 }, (_, i) => ({ dataType: "inventory", data: { productId: "gap-1", warehouseId: "w", quantity: 101 + i } })));
    await new Promise((resolve) => inv.once("connect", resolve));
    check(inv.recovered === false, "a session whose offset is no longer retained is not recovered");
    inv.disconnect();
  },

  // Many clients connect at once and subscribe the moment their namespace CONNECT is
  // acknowledged: not one subscribe may be lost.
  async storm() {
    const n = Number(arg || 2000);
    const sockets = [];
    let subscribed = 0;
    for (let i = 0; i < n; i++) {
      const s = io(`${url}/inventory`, { ...opts, forceNew: true, reconnection: false });
      s.on("connect", () => s.emit("inventory:subscribe", { productIds: ["storm"] }));
      s.on("inventory:subscribed", () => subscribed++);
      sockets.push(s);
    }
    const deadline = Date.now() + 15000;
    while (subscribed < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    check(subscribed === n, `${subscribed} of ${n} subscribes answered`);
    let received = 0;
    sockets.forEach((s) => s.on("inventory:update", () => received++));
    await publish([{ dataType: "inventory", data: { productId: "storm", warehouseId: "w", quantity: 100 } }]);
    const until = Date.now() + 15000;
    while (received < n && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    check(received === n, `${received} of ${n} clients got the change`);
    sockets.forEach((s) => s.disconnect());
  },

  // A binary attachment is refused with an error event; the socket goes on working.
  async binary() {
    const socket = io(url, opts);
    await connected(socket);
    const error = new Promise((resolve) => socket.once("error", resolve));
    socket.emit("data:request", { dataType: "order_stats", blob: Buffer.from([1, 2, 3]) });
    const e = await error;
    check(e.code === "invalid_message" && /binary/.test(e.message), `error ${JSON.stringify(e)}`);
    const reply = await socket.emitWithAck("data:request", { dataType: "order_stats" });
    check(reply.dataType === "order_stats", "still usable after the refusal");
    socket.disconnect();
  },
};

const run = scenarios[scenario];
if (!run) fail(`unknown scenario; known: ${Object.keys(scenarios).join(", ")}`);
try {
  await run();
} catch (e) {
  fail(e && e.stack ? e.stack : String(e));
}
console.log(`ok ${scenario}`);
process.exit(0);
