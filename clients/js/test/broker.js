// Test harness: runs the real shardcast binary (SHARDCAST_BIN, default
// <repo>/target/debug/shardcast) on a loopback port with a temporary data directory and
// config, issues tokens with the sign of docs/protocol.md §1, and bounds every wait.

import { spawn } from "node:child_process";
import http from "node:http";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const SECRET = "s3cr3t";
export const ADMIN = "test-admin-key";
export const WAIT_MS = 10000;

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const BIN = process.env.SHARDCAST_BIN || join(repo, "target/debug/shardcast");

const md5 = (s) => createHash("md5").update(s, "utf8").digest("hex");

/** The sign of docs/protocol.md §1 for the top-level secret (domain-bound unless default). */
export function sign(uid, timestamp, secret, domain = "default") {
  const parts = md5(uid) + md5(timestamp) + md5(secret);
  return md5(domain === "default" ? parts : parts + md5(domain));
}

/** Rejects after `ms` with `what` unless `promise` settles first. */
export function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `type` event of `client` (optionally the next one `accept` accepts), bounded. */
export function next(client, type, accept = () => true, ms = WAIT_MS) {
  let off;
  const p = new Promise((resolve) => {
    off = client.on(type, (v) => {
      if (accept(v)) {
        off();
        resolve(v);
      }
    });
  });
  return within(p, `event "${type}"`, ms).finally(() => off());
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Broker {
  /** `overrides`: extra TOML lines `key = value` (values already TOML-encoded). */
  constructor(overrides = {}) {
    this.dir = mkdtempSync(join(tmpdir(), "shardcast-js-"));
    this.keys = {
      listen: '"127.0.0.1:0"',
      data_dir: JSON.stringify(join(this.dir, "data")),
      shards: "2",
      secret: JSON.stringify(SECRET),
      admin_key: JSON.stringify(ADMIN),
      log_level: '"warn"',
      ...overrides,
    };
    this.child = null;
    this.addr = null;
  }

  get base() {
    return `http://${this.addr}`;
  }

  /** Starts the broker; after the first start, on the same port (and data directory). */
  async start() {
    if (this.addr) this.keys.listen = JSON.stringify(this.addr);
    const config = join(this.dir, "shardcast.toml");
    writeFileSync(config, Object.entries(this.keys).map(([k, v]) => `${k} = ${v}\n`).join(""));
    const child = spawn(BIN, ["--config", config], { stdio: ["ignore", "pipe", "inherit"] });
    this.child = child;
    const line = new Promise((resolve, reject) => {
      let buf = "";
      child.stdout.setEncoding("utf8");
      child.stdout.on("data", (chunk) => {
        if (buf === null) return; // drained after the first line so the pipe never fills
        buf += chunk;
        const nl = buf.indexOf("\n");
        if (nl >= 0) {
          resolve(buf.slice(0, nl).trim());
          buf = null;
        }
      });
      child.on("error", reject);
      child.on("exit", (code) => reject(new Error(`shardcast (${BIN}) exited with ${code} before listening`)));
    });
    const first = await within(line, "the broker to print its address");
    const prefix = "shardcast listening on ";
    if (!first.startsWith(prefix)) throw new Error(`unexpected first line: ${first}`);
    this.addr = first.slice(prefix.length);
    return this;
  }

  /** SIGTERM (the broker closes connections with 1001 and flushes) and waits for the exit. */
  async terminate() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    this.child = null;
    const exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
    child.kill("SIGTERM");
    try {
      return await within(exited, "the broker to exit after SIGTERM");
    } catch (e) {
      child.kill("SIGKILL");
      throw e;
    }
  }

  /** For `after` hooks: stops the broker however it can and removes its directory. */
  async stop() {
    try {
      await this.terminate();
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  /** One request on a fresh connection (a pooled one could outlive a restarted broker). */
  async request(method, path, { auth, body } = {}) {
    const headers = { Connection: "close" };
    if (auth) headers.Authorization = `Bearer ${auth}`;
    const data = body === undefined ? undefined : JSON.stringify(body);
    if (data !== undefined) headers["Content-Length"] = Buffer.byteLength(data);
    const exchange = new Promise((resolve, reject) => {
      const req = http.request(this.base + path, { method, headers, agent: false }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode, body: JSON.parse(text) }));
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end(data);
    });
    return within(exchange, `${method} ${path}`);
  }

  /** A token for `(domain, uid)` through GET /auth/websocket, signed now. */
  async token(uid, domain = "default") {
    const ts = String(Math.floor(Date.now() / 1000));
    const q = new URLSearchParams({ uid, timestamp: ts, sign: sign(uid, ts, SECRET, domain) });
    if (domain !== "default") q.set("domain", domain);
    const { status, body } = await this.request("GET", `/auth/websocket?${q}`);
    if (status !== 200 || body.code !== 0) throw new Error(`token for ${uid}: ${JSON.stringify(body)}`);
    return body.content.token;
  }

  async push(uids, title, content) {
    const { body } = await this.request("POST", "/push", { auth: ADMIN, body: { uids, title, content } });
    if (body.code !== 0) throw new Error(`push: ${JSON.stringify(body)}`);
    return body.content;
  }

  async presence(uid, domain = "default") {
    const q = new URLSearchParams({ uid, domain });
    const { body } = await this.request("GET", `/presence?${q}`, { auth: ADMIN });
    return body.content;
  }
}
