"use strict";
// Benchmark peer: the /inventory subset of nilecast's protocol on Socket.IO 4.8 (Node 20).
//
// * Namespace /inventory: `inventory:subscribe {productIds:[...]}` joins the rooms product:<id>
//   and answers {subscriptionId, filters, replayed:0, gap:false} through the ack callback, or,
//   when the client passed none, as the event `inventory:subscribed`.
// * POST /publish on the same HTTP server: one change or an array of changes
//   {"dataType":"inventory","tenantId":"default","data":{"productId":"p-1",...}}. Each change
//   gets the next seq and P = {seq,type,timestamp,tenantId,data} goes out as `inventory:update`
//   to the room product:<data.productId>. A room broadcast is encoded once by socket.io-adapter
//   and written pre-encoded to every socket. Answers 200 {"seqs":[...]}.
//
// Prints `listening on <port>` when ready; exits on SIGINT/SIGTERM.

const http = require("node:http");
const { Server } = require("socket.io");

const PORT = Number(process.env.PORT || 4101);
const HOST = process.env.HOST || "127.0.0.1";
const MAX_BODY_BYTES = 1024 * 1024;

let lastSeq = 0;
let nextSubscription = 1;

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

// Product ids are strings or numbers, compared as strings.
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

    // Validate the whole batch before publishing any of it.
    const rooms = new Array(changes.length);
    for (let i = 0; i < changes.length; i++) {
      const c = changes[i];
      if (!isPlainObject(c) || c.dataType !== "inventory" || !isPlainObject(c.data)) {
        return sendError(res, 400, "invalid_message",
          'each change must be {"dataType":"inventory","data":{...}}');
      }
      if (c.tenantId !== undefined && typeof c.tenantId !== "string") {
        return sendError(res, 400, "invalid_message", "tenantId must be a string");
      }
      const id = idString(c.data.productId);
      if (id === null) {
        return sendError(res, 400, "invalid_message", "data.productId must be a string or a number");
      }
      rooms[i] = "product:" + id;
    }

    const seqs = new Array(changes.length);
    for (let i = 0; i < changes.length; i++) {
      const c = changes[i];
      const seq = ++lastSeq;
      const p = {
        seq,
        type: "inventory_update",
        timestamp: new Date().toISOString(),
        tenantId: c.tenantId === undefined ? "default" : c.tenantId,
        data: c.data,
      };
      inventory.to(rooms[i]).emit("inventory:update", p);
      seqs[i] = seq;
    }
    sendJson(res, 200, { seqs });
  });
}

// Socket.IO takes over /socket.io/ requests; everything else reaches this listener.
const httpServer = http.createServer((req, res) => {
  const path = req.url.split("?", 1)[0];
  if (path === "/publish") {
    if (req.method === "POST") return handlePublish(req, res);
    return sendError(res, 405, "method_not_allowed", "use POST");
  }
  if (path === "/" && req.method === "GET") {
    return sendJson(res, 200, { name: "peer-socketio-node", namespaces: ["/inventory"] });
  }
  sendError(res, 404, "not_found", `no route for ${req.method} ${path}`);
});

const io = new Server(httpServer, {
  serveClient: false,
  // Both transports are offered (Socket.IO's default); the load generator uses websocket only.
  transports: ["polling", "websocket"],
  // Same heartbeat as nilecast (heartbeatMs 25000).
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 64 * 1024,
  perMessageDeflate: false,
});

const inventory = io.of("/inventory");

inventory.on("connection", (socket) => {
  // Registered synchronously in the connection handler, so a subscribe sent right after the
  // namespace CONNECT is never missed.
  socket.on("inventory:subscribe", (filters, ack) => {
    if (typeof filters === "function") {
      ack = filters;
      filters = {};
    }
    if (!isPlainObject(filters)) filters = {};
    const ids = filters.productIds;
    let rooms = [];
    if (ids !== undefined && ids !== null) {
      const strs = Array.isArray(ids) ? ids.map(idString) : null;
      if (strs === null || strs.includes(null)) {
        const err = {
          error: { code: "invalid_filter", message: "productIds must be an array of strings or numbers" },
        };
        if (typeof ack === "function") ack(err);
        else socket.emit("error", err.error);
        return;
      }
      rooms = strs.map((id) => "product:" + id);
    }
    socket.join(rooms);
    const reply = {
      subscriptionId: "sub-" + nextSubscription++,
      filters,
      replayed: 0,
      gap: false,
    };
    if (typeof ack === "function") ack(reply);
    else socket.emit("inventory:subscribed", reply);
  });
});

function shutdown() {
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

httpServer.listen(PORT, HOST, () => {
  console.log(`listening on ${httpServer.address().port}`);
});
