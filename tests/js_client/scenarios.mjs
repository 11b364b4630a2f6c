// The JavaScript client (clients/js/nilecast.js) in Node against a real server.
// `node tests/js_client/scenarios.mjs <scenario> <url>` prints `ok <scenario>` (and, for
// `restart`, a JSON line of what it received) or `FAIL ...` and exits 1.
import WebSocket from "ws";
import { NilecastClient, NilecastError, WebSocketRealTimeClient, WebSocketUtils } from "../../clients/js/nilecast.js";

const [scenario, url, arg] = process.argv.slice(2);
const TIMEOUT_MS = 30000;
function fail(message) {
  console.log(`FAIL ${scenario}: ${message}`);
  process.exit(1);
}
setTimeout(() => fail("timed out"), TIMEOUT_MS).unref();
function check(condition, message) {
  if (!condition) fail(message);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, predicate, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) fail(`waited too long for ${what}`);
    await sleep(20);
  }
}

async function publish(changes) {
  const res = await fetch(`${url}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(changes),
  });
  if (!res.ok) throw new Error(`POST /publish: ${res.status}`);
  return (await res.json()).seqs;
}

const scenarios = {
  // The seed README's client-utility snippet, as it is (with the server's URL and, in
  // Node before 22, a WebSocket implementation).
  async seed() {
    const client = new WebSocketRealTimeClient({
      url,
      token: "your-jwt-token",
      autoReconnect: true,
      maxReconnectAttempts: 5,
      WebSocket,
    });
    await client.connect();
    await client.subscribeToInventory({
      productIds: ["product-123"],
      lowStockOnly: true,
    });
    const alerts = [];
    const updates = [];
    client.on("inventory:update", (data) => updates.push(data));
    client.on("inventory:low-stock", (alert) => alerts.push(alert));
    const inventoryData = await client.requestData("inventory_summary", {
      limit: 100,
      category: "electronics",
    });
    check(typeof inventoryData.totalProducts === "number", `requestData ${JSON.stringify(inventoryData)}`);
    const trackingInfo = await client.trackOrder("order-123");
    check(trackingInfo.orderId === "order-123", `trackOrder ${JSON.stringify(trackingInfo)}`);
    await publish([{ dataType: "inventory", data: { productId: "product-123", warehouseId: "w", quantity: 2 } }]);
    await until("the update and its alert", () => updates.length === 1 && alerts.length === 1);
    check(WebSocketUtils.isLowStock(updates[0].data), "WebSocketUtils.isLowStock");
    check(WebSocketUtils.lastSeq(client, "/inventory") === updates[0].seq, "WebSocketUtils.lastSeq");
    client.disconnect();
  },

  // The seed client API: connect, subscriptions, promises, on/off, queueing.
  async api() {
    const client = new NilecastClient({ url, WebSocket, tenant: "js" });
    // Sent before the connection exists: queued, answered once connected.
    const early = client.requestData("inventory_summary");
    const established = await client.connect();
    check(typeof established.connectionId === "string", "connection:established");
    const summary = await early;
    check(typeof summary.totalProducts === "number", `requestData: ${JSON.stringify(summary)}`);

    const updates = [];
    const onUpdate = (change) => updates.push(change);
    client.on("inventory:update", onUpdate);
    const sub = await client.subscribeToInventory({ productIds: ["js-1"] });
    check(typeof sub.subscriptionId === "string", `subscribe reply ${JSON.stringify(sub)}`);
    const orders = [];
    client.on("order:update", (o) => orders.push(o));
    await client.subscribeToOrders({ customerId: "c-js" });
    const notes = [];
    client.on("notification", (n) => notes.push(n));
    await client.subscribeToNotifications({});
    const activity = [];
    client.on("customer:activity", (a) => activity.push(a));
    await client.subscribeToCustomer({ customerId: "c-js" });
    const dashboards = [];
    client.on("dashboard:data", (d) => dashboards.push(d));
    await client.subscribeToDashboard({ dashboardId: "d1", widgets: ["inventory-summary"] });

    await publish([
      { dataType: "inventory", tenantId: "js", data: { productId: "js-1", warehouseId: "w", quantity: 50 } },
      { dataType: "orders", tenantId: "js", data: { orderId: "o-js", customerId: "c-js", status: "confirmed" } },
      { dataType: "customer_activity", tenantId: "js", data: { customerId: "c-js", activityType: "login" } },
      { dataType: "notification", tenantId: "js", data: { type: "system_alert", priority: "high", message: "hi" } },
    ]);
    await until("every event", () => updates.length && orders.length && activity.length && notes.length && dashboards.length);
    check(updates[0].data.productId === "js-1", "inventory:update");

    const tracked = await client.trackOrder("o-js");
    check(tracked.orderId === "o-js", `trackOrder ${JSON.stringify(tracked)}`);
    // A refusal rejects the promise with the server's code.
    const refused = await client.requestData("nope").then(() => null, (e) => e);
    check(refused instanceof NilecastError && refused.code === "not_found", `refusal ${refused}`);

    // off: no more calls.
    client.off("inventory:update", onUpdate);
    await publish([{ dataType: "inventory", tenantId: "js", data: { productId: "js-1", warehouseId: "w", quantity: 51 } }]);
    await client.requestData("inventory_summary");
    check(updates.length === 1, "off stops the handler");

    // A dropped connection reconnects by itself and resumes after the last seq.
    const again = [];
    client.on("inventory:update", (c) => again.push(c.seq));
    const reconnected = new Promise((r) => client.on("connected", r));
    client.ws.close(4000);
    const missed = await publish([52, 53, 54].map((q) => ({ dataType: "inventory", tenantId: "js", data: { productId: "js-1", warehouseId: "w", quantity: q } })));
    await reconnected;
    await until("the missed changes", () => again.length >= 3);
    check(JSON.stringify(again) === JSON.stringify(missed), `after reconnect ${JSON.stringify(again)} vs ${JSON.stringify(missed)}`);
    client.disconnect();
  },

  // A stream of changes while the test restarts the server (with a database, so the
  // change log outlives it): every change arrives once, in order.
  async restart() {
    const total = Number(arg || 300);
    const client = new NilecastClient({ url, WebSocket, tenant: "restart", reconnectDelayMs: 100, maxReconnectDelayMs: 400 });
    const got = [];
    client.on("inventory:update", (c) => got.push(c.seq));
    await client.connect();
    await client.subscribeToInventory({});
    let published = 0;
    for (let i = 0; i < total; i++) {
      for (;;) {
        try {
          await publish([{ dataType: "inventory", tenantId: "restart", data: { productId: `r-${i}`, warehouseId: "w", quantity: 100 } }]);
          break;
        } catch {
          await sleep(50);
        }
      }
      published++;
      if (published === Math.floor(total / 3)) console.log("streaming");
      await sleep(5);
    }
    await until("every change", () => got.length >= total, 20000);
    await sleep(200);
    console.log(JSON.stringify({ got }));
    client.disconnect();
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
