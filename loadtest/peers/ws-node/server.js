"use strict";
// Benchmark peer: the /inventory subset of nilecast's native protocol (raw WebSocket, one
// JSON object per text frame) on ws 8 and Node 20: the usual way a Node service pushes to
// plain WebSocket clients, and the reference for permessage-deflate.
//
// * GET /ws or / with Upgrade: on open, `connection:established`; the client's
//   {"ns":"/inventory","event":"inventory:subscribe","data":{"productIds":[...]},"ack":N}
//   adds the socket to the set of each product and is answered
//   {"ns":"/inventory","ack":N,"data":{subscriptionId,filters,replayed:0,gap:false}}.
// * POST /publish: one change or an array of changes
//   {"dataType":"inventory","tenantId":"default","data":{"productId":"p-1",...}}. Each change
//   gets the next seq; the frame {"ns":"/inventory","event":"inventory:update","data":P} is
//   stringified once and sent with ws.send() to every socket of the product. With
//   PERMESSAGE_DEFLATE=true, ws negotiates permessage-deflate with its defaults and
//   compresses each message once per socket (ws keeps a compression context per
//   connection). Answers 200 {"seqs":[...]}.
//
// Prints `listening on <port>` when ready; exits on SIGINT/SIGTERM.

const http = require("node:http");
const { WebSocketServer } = require("ws");

const PORT = Number(process.env.PORT || 4105);
const HOST = process.env.HOST || "127.0.0.1";
const DEFLATE = process.env.PERMESSAGE_DEFLATE === "true";
const MAX_BODY_BYTES = 1024 * 1024;
const MAX_MESSAGE_BYTES = 64 * 1024;

let lastSeq = 0;
let nextConnection = 1;
let nextSubscription = 1;
/** product id -> Set of sockets */
const products = new Map();

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

function sendError(res, status, code, message) {
  sendJson(res, status, { error: { code, message } });
}

function idString(v) {
  if (typeof v === "string") return v;
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  return null;
}

function isPlainObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function handlePublish(req, res) {
  const chunks = [];
  let size = 0;
  let tooLarge = false;
  req.on("data", (chunk) => {
    if (tooLarge) return;
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      tooLarge = true;
      sendError(res, 413, "payload_too_large", `body larger than ${MAX_BODY_BYTES} bytes`);
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    if (tooLarge) return;
    let body;
    try {
      body = JSON.parse(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
    } catch (e) {
      return sendError(res, 400, "invalid_message", `body is not JSON: ${e.message}`);
    }
    const changes = Array.isArray(body) ? body : [body];
    const ids = new Array(changes.length);
    for (let i = 0; i < changes.length; i++) {
      const c = changes[i];
      if (!isPlainObject(c) || c.dataType !== "inventory" || !isPlainObject(c.data)) {
        return sendError(res, 400, "invalid_message",
          'each change must be {"dataType":"inventory","data":{...}}');
      }
      const id = idString(c.data.productId);
      if (id === null) {
        return sendError(res, 400, "invalid_message", "data.productId must be a string or a number");
      }
      ids[i] = id;
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
      const sockets = products.get(ids[i]);
      if (sockets) for (const ws of sockets) ws.send(frame);
      seqs[i] = seq;
    }
    sendJson(res, 200, { seqs });
  });
}

const httpServer = http.createServer((req, res) => {
  const path = req.url.split("?", 1)[0];
  if (path === "/publish") {
    if (req.method === "POST") return handlePublish(req, res);
    return sendError(res, 405, "method_not_allowed", "use POST");
  }
  if (path === "/" && req.method === "GET") {
    return sendJson(res, 200, { name: "peer-ws-node", deflate: DEFLATE, namespaces: ["/inventory"] });
  }
  sendError(res, 404, "not_found", `no route for ${req.method} ${path}`);
});

const wss = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_MESSAGE_BYTES,
  // ws's defaults when on: context takeover both ways, a 1 KiB threshold for messages
  // sent without context takeover, 10 concurrent zlib jobs.
  perMessageDeflate: DEFLATE,
});

httpServer.on("upgrade", (req, socket, head) => {
  const path = req.url.split("?", 1)[0];
  if (path !== "/ws" && path !== "/") {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws));
});

wss.on("connection", (ws) => {
  const subscribed = new Set();
  ws.send(JSON.stringify({
    ns: "/",
    event: "connection:established",
    data: {
      connectionId: "c-" + nextConnection++,
      serverTime: new Date().toISOString(),
      namespaces: ["/inventory"],
      authenticated: false,
      heartbeatMs: 25000,
    },
  }));
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!isPlainObject(msg) || msg.ns !== "/inventory" || msg.event !== "inventory:subscribe") return;
    const filters = isPlainObject(msg.data) ? msg.data : {};
    const ids = Array.isArray(filters.productIds) ? filters.productIds.map(idString) : [];
    for (const id of ids) {
      if (id === null) continue;
      let set = products.get(id);
      if (!set) products.set(id, (set = new Set()));
      set.add(ws);
      subscribed.add(id);
    }
    const reply = { subscriptionId: "sub-" + nextSubscription++, filters, replayed: 0, gap: false };
    ws.send(JSON.stringify(msg.ack !== undefined
      ? { ns: "/inventory", ack: msg.ack, data: reply }
      : { ns: "/inventory", event: "inventory:subscribed", data: reply }));
  });
  ws.on("close", () => {
    for (const id of subscribed) {
      const set = products.get(id);
      if (!set) continue;
      set.delete(ws);
      if (set.size === 0) products.delete(id);
    }
  });
});

httpServer.listen(PORT, HOST, () => {
  console.log(`listening on ${PORT} (permessage-deflate ${DEFLATE ? "on" : "off"})`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => process.exit(0));
}
