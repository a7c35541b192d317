// A minimal backend for a page that uses shardcast: it serves the page and the JavaScript
// client, signs token requests with the broker's secret (the browser never sees it), and
// calls the broker's admin API for a push and a chat message. Node ≥ 18, no dependencies.
//
//   SHARDCAST_URL       the broker as this server reaches it   (http://127.0.0.1:9501)
//   SHARDCAST_PUBLIC_URL the broker as the browser reaches it  (SHARDCAST_URL)
//   SHARDCAST_SECRET    the broker's `secret`                   (dev-secret-change-me)
//   SHARDCAST_ADMIN_KEY the broker's `admin_key`                (dev-admin-key-change-me)
//   HOST, PORT          where this server listens               (127.0.0.1, 8080; 0 picks one)
//
// It prints one line, `example: http://HOST:PORT -> broker URL`, once it listens.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";

const broker = (process.env.SHARDCAST_URL || "http://127.0.0.1:9501").replace(/\/$/, "");
const publicBroker = (process.env.SHARDCAST_PUBLIC_URL || broker).replace(/\/$/, "");
const secret = process.env.SHARDCAST_SECRET || "dev-secret-change-me";
const adminKey = process.env.SHARDCAST_ADMIN_KEY || "dev-admin-key-change-me";
const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT ?? 8080);

const here = (rel) => fileURLToPath(new URL(rel, import.meta.url));
const files = {
  "/": [here("./index.html"), "text/html; charset=utf-8"],
  "/shardcast.js": [here("../../clients/js/src/shardcast.js"), "text/javascript; charset=utf-8"],
};

const md5 = (s) => createHash("md5").update(s, "utf8").digest("hex");

/**
 * The sign of a token request (PROTOCOL.md §1): MD5 over the hex MD5s of uid, timestamp
 * and secret, each lower-case hex; for a domain other than the default one (and not
 * declared with its own secret) the hex MD5 of the domain is appended.
 */
export function sign(uid, timestamp, secretKey, domain = "default") {
  let parts = md5(uid) + md5(timestamp) + md5(secretKey);
  if (domain !== "default") parts += md5(domain);
  return md5(parts);
}

/** Calls the broker; resolves with its `{code, msg, content}` envelope. */
async function callBroker(method, path, body) {
  const headers = {};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    headers.Authorization = `Bearer ${adminKey}`;
  }
  const r = await fetch(`${broker}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return r.json();
}

/**
 * A token for `uid`. A real backend takes the uid from its own session (the logged-in
 * user), never from the request; this demo has no logins, so the page says who it is.
 */
async function token(uid) {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const q = new URLSearchParams({ uid, timestamp, sign: sign(uid, timestamp, secret) });
  return callBroker("GET", `/auth/websocket?${q}`);
}

const validUid = (uid) => typeof uid === "string" && /^[A-Za-z0-9_.-]{1,64}$/.test(uid);

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > 64 * 1024) throw new Error("body too large");
    chunks.push(c);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
}

function send(res, status, type, body) {
  res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store" });
  res.end(body);
}
const sendJson = (res, status, value) => send(res, status, "application/json", JSON.stringify(value));

async function handle(req, res) {
  const url = new URL(req.url, "http://localhost");
  const file = files[url.pathname];
  if (req.method === "GET" && file) {
    return send(res, 200, file[1], await readFile(file[0]));
  }
  if (req.method === "GET" && url.pathname === "/config.json") {
    return sendJson(res, 200, { broker: publicBroker });
  }
  if (req.method === "GET" && url.pathname === "/api/shardcast-token") {
    const uid = url.searchParams.get("uid");
    if (!validUid(uid)) return sendJson(res, 400, { error: "uid: 1-64 of A-Z a-z 0-9 _ . -" });
    const answer = await token(uid);
    if (answer.code !== 0) return sendJson(res, 502, { error: "the broker refused", answer });
    return sendJson(res, 200, { token: answer.content.token });
  }
  if (req.method === "POST" && (url.pathname === "/api/push" || url.pathname === "/api/message")) {
    const { uid, title, content } = await readJson(req);
    if (!validUid(uid) || typeof content !== "string") {
      return sendJson(res, 400, { error: "expected {uid, content[, title]}" });
    }
    // Your backend decides who gets what; here the page asks for itself.
    const answer = url.pathname === "/api/push"
      ? await callBroker("POST", "/push", { uids: [uid], title: String(title ?? "Hello"), content })
      : await callBroker("POST", "/message", {
        toId: uid, type: 10, content, fromId: "support", fromName: "Support", fromResource: "backend",
      });
    return sendJson(res, answer.code === 0 ? 200 : 502, answer);
  }
  return sendJson(res, 404, { error: "not found" });
}

/** Listens on HOST:PORT and prints where. */
export function start() {
  const server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      console.error(`example: ${req.method} ${req.url}: ${e.message}`);
      if (!res.headersSent) sendJson(res, 500, { error: e.message });
    });
  });
  server.listen(port, host, () => {
    const { port: bound } = server.address();
    console.log(`example: http://${host}:${bound} -> broker ${broker}`);
  });
  for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
  return server;
}

// Run as a program (`node server.js`), not imported (for `sign`, say): listen.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) start();
