// Benchmark peer: the /inventory subset of nilecast's native protocol (raw WebSocket, one JSON
// object per text frame) on Bun's built-in WebSocket pub/sub (uWebSockets topics).
//
// * GET /ws or / with Upgrade: on open, `connection:established`; the client's
//   {"ns":"/inventory","event":"inventory:subscribe","data":{"productIds":[...]},"ack":N}
//   subscribes the socket to the topic inventory:<id> per product and is answered
//   {"ns":"/inventory","ack":N,"data":{subscriptionId,filters,replayed:0,gap:false}}
//   (without `ack`: the event `inventory:subscribed` with that data).
// * POST /publish: one change or an array of changes
//   {"dataType":"inventory","tenantId":"default","data":{"productId":"p-1",...}}. Each change
//   gets the next seq; the frame {"ns":"/inventory","event":"inventory:update","data":P} is
//   stringified once and handed to server.publish("inventory:<productId>", frame), which writes
//   the same bytes to every subscriber. Answers 200 {"seqs":[...]}.
//
// Run with the pinned Bun: node_modules/@oven/bun-linux-x64/bin/bun server.js
// Prints `listening on <port>` when ready; exits on SIGINT/SIGTERM.

const PORT = Number(process.env.PORT || 4102);
const HOST = process.env.HOST || "127.0.0.1";
const HEARTBEAT_MS = 25000;
const MAX_BODY_BYTES = 1024 * 1024;
const MAX_MESSAGE_BYTES = 64 * 1024;
const JSON_HEADERS = { "content-type": "application/json" };

let lastSeq = 0;
let nextConnection = 1;
let nextSubscription = 1;

function jsonResponse(status, body) {
  return new Response(JSON.stringify(body), { status, headers: JSON_HEADERS });
}

function errorResponse(status, code, message) {
  return jsonResponse(status, { error: { code, message } });
}

// Product ids are strings or numbers, compared as strings.
function idString(v) {
  if (typeof v === "string") return v;
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  return null;
}

function isPlainObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function sendError(ws, ns, ack, code, message, event) {
  if (ack !== undefined) {
    ws.send(JSON.stringify({ ns, ack, data: { error: { code, message } } }));
  } else {
    const data = { code, message };
    if (event !== undefined) data.event = event;
    ws.send(JSON.stringify({ ns, event: "error", data }));
  }
}

function onSubscribe(ws, ack, filters) {
  const ids = filters.productIds;
  let topics = [];
  if (ids !== undefined && ids !== null) {
    const strs = Array.isArray(ids) ? ids.map(idString) : null;
    if (strs === null || strs.includes(null)) {
      return sendError(ws, "/inventory", ack, "invalid_filter",
        "productIds must be an array of strings or numbers", "inventory:subscribe");
    }
    topics = strs.map((id) => "inventory:" + id);
  }
  for (const t of topics) ws.subscribe(t);
  const data = { subscriptionId: "sub-" + nextSubscription++, filters, replayed: 0, gap: false };
  ws.send(JSON.stringify(ack !== undefined
    ? { ns: "/inventory", ack, data }
    : { ns: "/inventory", event: "inventory:subscribed", data }));
}

async function publish(req, server) {
  const len = Number(req.headers.get("content-length") || 0);
  if (len > MAX_BODY_BYTES) {
    return errorResponse(413, "payload_too_large", `body larger than ${MAX_BODY_BYTES} bytes`);
  }
  let body;
  try {
    body = await req.json();
  } catch (e) {
    return errorResponse(400, "invalid_message", `body is not JSON: ${e.message}`);
  }
  const changes = Array.isArray(body) ? body : [body];

  // Validate the whole batch before publishing any of it.
  const topics = new Array(changes.length);
  for (let i = 0; i < changes.length; i++) {
    const c = changes[i];
    if (!isPlainObject(c) || c.dataType !== "inventory" || !isPlainObject(c.data)) {
      return errorResponse(400, "invalid_message",
        'each change must be {"dataType":"inventory","data":{...}}');
    }
    if (c.tenantId !== undefined && typeof c.tenantId !== "string") {
      return errorResponse(400, "invalid_message", "tenantId must be a string");
    }
    const id = idString(c.data.productId);
    if (id === null) {
      return errorResponse(400, "invalid_message", "data.productId must be a string or a number");
    }
    topics[i] = "inventory:" + id;
  }

  const seqs = new Array(changes.length);
  for (let i = 0; i < changes.length; i++) {
    const c = changes[i];
    const seq = ++lastSeq;
    const frame = JSON.stringify({
      ns: "/inventory",
      event: "inventory:update",
      data: {
        seq,
        type: "inventory_update",
        timestamp: new Date().toISOString(),
        tenantId: c.tenantId === undefined ? "default" : c.tenantId,
        data: c.data,
      },
    });
    server.publish(topics[i], frame);
    seqs[i] = seq;
  }
  return jsonResponse(200, { seqs });
}

const server = Bun.serve({
  hostname: HOST,
  port: PORT,
  maxRequestBodySize: MAX_BODY_BYTES,

  fetch(req, server) {
    const url = new URL(req.url);
    const path = url.pathname;
    if (path === "/ws" || path === "/") {
      if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
        if (server.upgrade(req, { data: { id: "c-" + nextConnection++ } })) return undefined;
        return errorResponse(400, "invalid_message", "WebSocket upgrade failed");
      }
      if (path === "/" && req.method === "GET") {
        return jsonResponse(200, { name: "peer-bun", namespaces: ["/inventory"] });
      }
    }
    if (path === "/publish") {
      if (req.method === "POST") return publish(req, server);
      return errorResponse(405, "method_not_allowed", "use POST");
    }
    return errorResponse(404, "not_found", `no route for ${req.method} ${path}`);
  },

  websocket: {
    // PERMESSAGE_DEFLATE=true (compare.sh's bun-deflate): uWebSockets' shared compressor.
    perMessageDeflate: process.env.PERMESSAGE_DEFLATE === "true",
    maxPayloadLength: MAX_MESSAGE_BYTES,
    // Bun pings a quiet client before the idle timeout and keeps it while it answers.
    idleTimeout: 120,
    sendPings: true,

    open(ws) {
      ws.send(JSON.stringify({
        ns: "/",
        event: "connection:established",
        data: {
          connectionId: ws.data.id,
          serverTime: new Date().toISOString(),
          namespaces: ["/inventory"],
          authenticated: false,
          heartbeatMs: HEARTBEAT_MS,
        },
      }));
    },

    message(ws, message) {
      if (typeof message !== "string") {
        return sendError(ws, "/", undefined, "invalid_message", "binary frames are not accepted");
      }
      let msg;
      try {
        msg = JSON.parse(message);
      } catch {
        return sendError(ws, "/", undefined, "invalid_message", "frame is not JSON");
      }
      if (!isPlainObject(msg)) {
        return sendError(ws, "/", undefined, "invalid_message", "frame is not a JSON object");
      }
      const ns = msg.ns === undefined ? "/" : msg.ns;
      const { event, ack } = msg;
      const data = msg.data === undefined ? {} : msg.data;
      if (typeof ns !== "string" || typeof event !== "string" ||
          (ack !== undefined && !(Number.isInteger(ack) && ack >= 0)) || !isPlainObject(data)) {
        return sendError(ws, typeof ns === "string" ? ns : "/",
          Number.isInteger(ack) && ack >= 0 ? ack : undefined, "invalid_message",
          "frame needs string ns/event, object data and a non-negative integer ack");
      }
      if (ns === "/inventory" && event === "inventory:subscribe") {
        return onSubscribe(ws, ack, data);
      }
      if (ns !== "/" && ns !== "/inventory") {
        return sendError(ws, ns, ack, "not_found", `unknown namespace ${ns}`, event);
      }
      sendError(ws, ns, ack, "unknown_event", `this peer implements inventory:subscribe only`, event);
    },
  },
});

function shutdown() {
  server.stop(true);
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

console.log(`listening on ${server.port}`);
