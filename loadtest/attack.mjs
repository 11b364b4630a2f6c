// Re-attacks a nilecast binary the way a hostile client would, and prints figures:
// memory amplification through large replies, a ping flood, dashboard intervals as a
// CPU lever, deferred subscribes of closed connections, the cluster listing storm,
// and a login raced against deferred subscribes. Each scenario starts its own server
// process(es) on loopback ports, is bounded in connections and time, and stops them.
//
//   node loadtest/attack.mjs target/release/nilecast            # every scenario
//   node loadtest/attack.mjs BIN amplification intervals        # some of them
//
// Needs the root package's `ws` (npm ci), Redis on 127.0.0.1:6379 for `leak` and
// `storm`, PostgreSQL on 127.0.0.1:5432 (trust) with `psql` for `race`. Prints one JSON
// object per scenario; run it against two builds to compare them (loadtest/ATTACK.md).

import { spawn, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createHmac } from "node:crypto";
import WebSocket from "ws";

const [bin, ...picked] = process.argv.slice(2);
if (!bin) {
  console.error("usage: node loadtest/attack.mjs NILECAST_BINARY [scenario...]");
  process.exit(2);
}
const SECRET = "attack-script-secret-of-at-least-32-bytes";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function token(sub, tenant, roles) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, tenant_id: tenant, roles, exp: Math.floor(Date.now() / 1000) + 3600 });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

let nextPort = 4300 + Math.floor(Math.random() * 500);

/** Starts the binary with `env` on a fresh port; resolves once it listens. */
async function start(env, args = ["serve"]) {
  const port = nextPort++;
  const child = spawn(bin, args, {
    env: {
      PATH: process.env.PATH,
      WEBSOCKET_PORT: String(port),
      SIMULATE_RATE: "0",
      RUST_LOG: "warn,nilecast=info",
      MAX_CONNECTIONS_PER_IP: "0",
      UPGRADES_PER_IP_PER_S: "0",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no listening line:\n${log}`)), 30000);
    const onData = (d) => {
      log += d;
      if (log.includes("listening on")) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`exited ${code}:\n${log}`)));
  });
  return { port, pid: child.pid, stop: () => child.kill("SIGKILL") };
}

function rssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
}

function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function getJson(port, path, headers = {}) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { headers });
  return r.json();
}

async function post(port, path, body, headers = {}) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  return r.json();
}

/** A native connection; resolves once `connection:established` arrived. */
function connect(port, path = "/ws") {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`);
    ws.frames = [];
    ws.closeCode = null;
    ws.on("message", (m) => ws.frames.push(JSON.parse(m.toString())));
    ws.on("close", (code) => (ws.closeCode = code));
    ws.on("error", reject);
    ws.once("message", () => resolve(ws));
  });
}

/** Deletes a scenario's Redis keys. */
function dropKeys(prefix) {
  try {
    execFileSync("redis-cli", ["--scan", "--pattern", `${prefix}:*`]).toString().split("\n").filter(Boolean)
      .forEach((k) => execFileSync("redis-cli", ["del", k]));
  } catch {}
}

const frame = (ns, event, data, ack) => JSON.stringify({ ns, event, data, ack });

async function until(cond, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await sleep(50);
  }
  return false;
}

const scenarios = {
  /** Ten connections that never read ask for a ~120 KB reply 100 times each. */
  async amplification() {
    const s = await start({ RATE_LIMIT_MAX_MESSAGES: "100000" });
    try {
      const before = rssMiB(s.pid);
      const conns = await Promise.all(Array.from({ length: 10 }, () => connect(s.port)));
      let peak = before;
      for (const ws of conns) {
        ws._socket.pause();
        for (let i = 0; i < 100; i++) {
          ws.send(frame("/inventory", "inventory:get-current", { limit: 1000 }, i + 1));
        }
      }
      const end = Date.now() + 5000;
      while (Date.now() < end) {
        peak = Math.max(peak, rssMiB(s.pid));
        await sleep(100);
      }
      for (const ws of conns) ws._socket.resume();
      await until(() => conns.every((ws) => ws.closeCode !== null), 15000);
      const m = await getJson(s.port, "/metrics");
      return {
        rssBeforeMiB: +before.toFixed(1),
        rssPeakMiB: +peak.toFixed(1),
        grownMiB: +(peak - before).toFixed(1),
        repliesAskedMiB: Math.round((1000 * 120e3) / 2 ** 20),
        closeCodes: conns.map((ws) => ws.closeCode),
        slowConsumerCloses: m.websocket.slowConsumerCloses,
      };
    } finally {
      s.stop();
    }
  },

  /** One connection sends 1,000 pings with a rate limit of 100 per minute. */
  async pings() {
    const s = await start({});
    try {
      const ws = await connect(s.port);
      let pongs = 0;
      ws.on("pong", () => pongs++);
      for (let i = 0; i < 1000; i++) ws.ping("x");
      await until(() => ws.closeCode !== null, 5000);
      return { pingsSent: 1000, pongs, closeCode: ws.closeCode };
    } finally {
      s.stop();
    }
  },

  /** Three connections subscribe dashboards at 99 distinct intervals; server CPU. */
  async intervals() {
    const s = await start({});
    try {
      const idle0 = cpuSeconds(s.pid);
      await sleep(5000);
      const idle = (cpuSeconds(s.pid) - idle0) / 5;
      const conns = await Promise.all(Array.from({ length: 3 }, () => connect(s.port)));
      conns.forEach((ws, c) => {
        for (let i = 0; i < 33; i++) {
          const metricsInterval = 1000 + (c * 33 + i) * 37;
          ws.send(frame("/dashboard", "dashboard:subscribe", { dashboardId: "d", metricsInterval }, i + 1));
        }
      });
      await sleep(1000);
      const t0 = cpuSeconds(s.pid);
      await sleep(10000);
      const busy = (cpuSeconds(s.pid) - t0) / 10;
      const m = await getJson(s.port, "/metrics");
      conns.forEach((ws) => ws.close());
      return {
        idleCpuPercent: +(idle * 100).toFixed(1),
        attackedCpuPercent: +(busy * 100).toFixed(1),
        dashboardGroups: m.websocket.dashboardGroups ?? "not reported",
      };
    } finally {
      s.stop();
    }
  },

  /** 200 connections each send one subscribe that reads the change log, then close. */
  async leak() {
    const prefix = `attack-${process.pid}-${Date.now()}`;
    const s = await start({
      REDIS_URL: "redis://127.0.0.1:6379",
      REDIS_PREFIX: prefix,
      REPLAY_MAX_CHANGES: "4",
    });
    try {
      const changes = Array.from({ length: 2000 }, (_, i) => ({
        dataType: "inventory",
        data: { productId: `p-${i}`, warehouseId: "w-1", quantity: 50, pad: "x".repeat(200) },
      }));
      const { seqs } = await post(s.port, "/publish", changes);
      const last = seqs[seqs.length - 1];
      await until(async () => (await getJson(s.port, "/metrics")).changes.lastSeq >= last, 20000);
      const before = rssMiB(s.pid);
      for (let i = 0; i < 200; i++) {
        const ws = await connect(s.port);
        ws.send(frame("/inventory", "inventory:subscribe", { sinceSeq: 0 }, 1));
        ws.terminate();
      }
      await until(async () => (await getJson(s.port, "/metrics")).websocket.activeConnections === 0, 10000);
      await sleep(3000);
      const m = await getJson(s.port, "/metrics");
      return {
        rssBeforeMiB: +before.toFixed(1),
        rssAfterMiB: +rssMiB(s.pid).toFixed(1),
        activeConnections: m.websocket.activeConnections,
        subscriptions: m.websocket.subscriptions,
        indexEntries: m.websocket.indexEntries ?? "not reported",
      };
    } finally {
      s.stop();
      dropKeys(prefix);
    }
  },

  /** One `GET /clients?%73cope=cluster` on a two-node cluster. */
  async storm() {
    const prefix = `attack-${process.pid}-${Date.now()}`;
    const env = { REDIS_URL: "redis://127.0.0.1:6379", REDIS_PREFIX: prefix };
    const a = await start({ ...env, NODE_ID: "a" });
    const b = await start({ ...env, NODE_ID: "b" });
    try {
      await until(async () => (await getJson(a.port, "/health")).services.redis.members?.length === 2, 10000);
      const requests = async (n) => (await getJson(n.port, "/metrics")).server.totalRequests;
      const [a0, b0] = [await requests(a), await requests(b)];
      const [rssA, rssB] = [rssMiB(a.pid), rssMiB(b.pid)];
      const t0 = Date.now();
      const listed = await getJson(a.port, "/clients?%73cope=cluster");
      const ms = Date.now() - t0;
      await sleep(2000);
      // Less the /metrics reads that measure.
      const [a1, b1] = [(await requests(a)) - 1, (await requests(b)) - 1];
      return {
        answerMs: ms,
        nodesListed: listed.nodes?.length,
        requestsServedByA: a1 - a0,
        requestsServedByB: b1 - b0,
        rssGrownMiB: [+(rssMiB(a.pid) - rssA).toFixed(1), +(rssMiB(b.pid) - rssB).toFixed(1)],
      };
    } finally {
      a.stop();
      b.stop();
      dropKeys(prefix);
    }
  },

  /** A staff user of one tenant sends two subscribes that read the log and a login as
   * a customer of another tenant in one write, 20 times; frames of other customers. */
  async race() {
    const db = `nilecast_attack_${process.pid}`;
    const psql = (sql) => execFileSync("psql", ["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql]);
    psql(`DROP DATABASE IF EXISTS ${db}`);
    psql(`CREATE DATABASE ${db}`);
    const url = `postgres://postgres@127.0.0.1:5432/${db}`;
    execFileSync(bin, ["migrate"], { env: { PATH: process.env.PATH, NILEDB_CONNECTION_STRING: url } });
    const s = await start({ NILEDB_CONNECTION_STRING: url, JWT_SECRET: SECRET, REPLAY_MAX_CHANGES: "4", POLL_INTERVAL_MS: "50" });
    try {
      const auth = { authorization: `Bearer ${token("pub", "t-victim", ["publisher"])}` };
      const history = [];
      for (let i = 0; i < 1000; i++) {
        history.push({ dataType: "orders", tenantId: "t-victim", data: { orderId: `o-${i}`, customerId: "c-victim", status: "pending" } });
        history.push({ dataType: "customer_activity", tenantId: "t-victim", data: { customerId: "c-victim", activityType: "view" } });
      }
      const { seqs } = await post(s.port, "/publish", history, auth);
      await until(async () => (await getJson(s.port, "/metrics")).changes.lastSeq >= seqs[seqs.length - 1], 20000);
      let leaked = 0;
      const rounds = 20;
      for (let r = 0; r < rounds; r++) {
        const ws = await connect(s.port, `/ws?token=${token("staff-a", "t-attacker", ["staff"])}`);
        // Three frames in one turn of the event loop: they reach the server together.
        ws.send(frame("/orders", "orders:subscribe", { sinceSeq: 0 }, 1));
        ws.send(frame("/customer", "customer:subscribe", { sinceSeq: 0 }, 2));
        ws.send(frame("/", "auth:login", { token: token("c-att", "t-victim", ["customer"]) }, 3));
        await until(() => ws.frames.some((f) => f.ack === 3), 5000);
        const { seqs: live } = await post(s.port, "/publish", [
          { dataType: "orders", tenantId: "t-victim", data: { orderId: "o-live", customerId: "c-victim", status: "shipped" } },
          { dataType: "customer_activity", tenantId: "t-victim", data: { customerId: "c-victim", activityType: "checkout" } },
        ], auth);
        await until(async () => (await getJson(s.port, "/metrics")).changes.lastSeq >= live[1], 5000);
        await sleep(300);
        leaked += ws.frames.filter(
          (f) => f.event === "customer:activity" || (f.event === "order:update" && f.data.data.customerId !== "c-att"),
        ).length;
        ws.terminate();
      }
      return { rounds, framesOfOtherCustomers: leaked };
    } finally {
      s.stop();
      psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    }
  },
};

for (const name of picked.length ? picked : Object.keys(scenarios)) {
  if (!scenarios[name]) {
    console.error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
    process.exit(2);
  }
  try {
    console.log(JSON.stringify({ scenario: name, ...(await scenarios[name]()) }));
  } catch (e) {
    console.log(JSON.stringify({ scenario: name, error: String(e.message ?? e).slice(0, 500) }));
  }
}
process.exit(0);
