// shardcast JavaScript client: the notify and chat dialects of docs/protocol.md, with token
// refresh and reconnection. One self-contained ES module with no imports, so that the
// broker can serve this very file to its console (GET /console/shardcast.js) and a page
// can load it without a build step.

const CHAT_TYPES = [10, 20, 30, 40];
const MAX_IDS_PER_REPORT = 100;
const TOKEN_INVALID = 1004;
const CLOSE_POLICY = 1008;
const CLOSE_REPLACED = 4000;
// Chat errors the broker answers while it reads a frame, before storing it: they can
// arrive ahead of the acks of earlier sends (see ChatClient#_answer).
const READ_TIME_ERRORS = [2001, 2003, 2005];

const DEFAULT_RECONNECT = { baseMs: 500, maxMs: 30000, stableMs: 10000 };

/** An error of the broker, of a close, of the token provider, or of a call. */
export class ShardcastError extends Error {
  constructor(kind, code, message, options) {
    super(message, options);
    this.name = "ShardcastError";
    this.kind = kind;
    this.code = code;
  }
}

const encoder = new TextEncoder();

function validName(s) {
  if (typeof s !== "string") return false;
  const bytes = encoder.encode(s).length;
  // eslint-disable-next-line no-control-regex
  return bytes >= 1 && bytes <= 128 && !/[\u0000-\u001f\u007f]/.test(s);
}

// Callbacks of the application must not be able to break the connection logic: an
// exception thrown by one is rethrown on its own, where it is reported as uncaught.
function rethrowLater(e) {
  setTimeout(() => {
    throw e;
  }, 0);
}

class Emitter {
  constructor() {
    this._handlers = new Map();
  }

  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._handlers.get(type)?.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (v) => {
      off();
      fn(v);
    });
    return off;
  }

  _emit(type, value) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (e) {
        rethrowLater(e);
      }
    }
  }
}

function baseUrls(url) {
  let base = url;
  if (base === undefined && typeof globalThis.location !== "undefined") {
    base = globalThis.location.origin;
  }
  if (typeof base !== "string" || !/^(https?|wss?):\/\//i.test(base)) {
    throw new TypeError("options.url: the broker's address, e.g. http://127.0.0.1:9501");
  }
  base = base.replace(/\/+$/, "");
  const http = base.replace(/^ws(s?):/i, "http$1:");
  return { http, ws: http.replace(/^http(s?):/i, "ws$1:") };
}

/** The connection logic both dialects share: token, socket, closes, reconnection. */
class BaseClient extends Emitter {
  constructor(options) {
    super();
    const o = options || {};
    if (typeof o.getToken !== "function") {
      throw new TypeError("options.getToken: a function ({refresh}) => token");
    }
    this._urls = baseUrls(o.url);
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("options.WebSocket: no global WebSocket; pass a constructor");
    }
    const f = o.fetch || globalThis.fetch;
    this._fetch = typeof f === "function" ? f.bind(globalThis) : null;
    this._getToken = o.getToken;
    this._reconnect = o.reconnect === false ? null : { ...DEFAULT_RECONNECT, ...o.reconnect };
    this._connectTimeoutMs = o.connectTimeoutMs ?? 10000;
    this._network =
      o.network !== undefined ? o.network : typeof window !== "undefined" ? window : null;

    this._state = "idle";
    this._ws = null;
    // Bumped by every attempt and by close(): a token or a timer that belongs to an
    // earlier generation is dropped when it arrives.
    this._gen = 0;
    this._token = null;
    this._needRefresh = false;
    this._usingRefreshedToken = false;
    this._loginError = 0;
    this._failures = 0;
    this._retryTimer = null;
    this._stableTimer = null;
    this._connectTimer = null;
    this._offline = false;
    this._onOnline = () => this._networkChanged(true);
    this._onOffline = () => this._networkChanged(false);
  }

  /** "idle" | "connecting" | "open" | "waiting" | "offline" | "closed" */
  get state() {
    return this._state;
  }

  get connected() {
    return this._state === "open";
  }

  /** Starts connecting (and reconnecting); again after close() starts afresh. */
  connect() {
    if (this._state !== "idle" && this._state !== "closed") return this;
    this._failures = 0;
    this._needRefresh = false;
    this._listenNetwork(true);
    if (this._offline) this._setState("offline");
    else this._attempt();
    return this;
  }

  /** Closes the connection with 1000 and stops every retry; emits "close" at once. */
  close() {
    if (this._state === "idle" || this._state === "closed") return;
    this._gen++;
    this._clearTimers();
    this._listenNetwork(false);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // Already closing.
      }
    }
    this._lost(1000);
    this._setState("closed");
    this._emit("close", { code: 1000, reason: "closed by the client", willReconnect: false, delayMs: null });
  }

  _setState(s) {
    if (this._state === s) return;
    this._state = s;
    this._emit("state", s);
  }

  _listenNetwork(on) {
    const n = this._network;
    if (!n || typeof n.addEventListener !== "function") return;
    if (on) {
      n.addEventListener("online", this._onOnline);
      n.addEventListener("offline", this._onOffline);
      this._offline = n.navigator ? n.navigator.onLine === false : false;
    } else {
      n.removeEventListener("online", this._onOnline);
      n.removeEventListener("offline", this._onOffline);
    }
  }

  _networkChanged(online) {
    this._offline = !online;
    if (online && (this._state === "waiting" || this._state === "offline")) {
      // Back online: the wait was for the network, not for the broker.
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._attempt();
    } else if (!online && this._state === "waiting") {
      // A connection that is open is left alone: the browser closes it if it is dead.
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._setState("offline");
    }
  }

  _clearTimers() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._stableTimer);
    clearTimeout(this._connectTimer);
    this._retryTimer = this._stableTimer = this._connectTimer = null;
  }

  async _attempt() {
    const gen = ++this._gen;
    this._setState("connecting");
    const refresh = this._needRefresh;
    let token;
    try {
      token = await this._getToken({ refresh });
      if (typeof token !== "string" || token === "") {
        throw new TypeError("getToken returned no token");
      }
    } catch (e) {
      if (gen !== this._gen) return;
      this._emit("error", new ShardcastError("token", 0, `getToken failed: ${e && e.message}`, { cause: e }));
      this._retry();
      return;
    }
    if (gen !== this._gen) return;
    this._needRefresh = false;
    this._usingRefreshedToken = refresh;
    this._token = token;
    this._loginError = 0;
    let ws;
    try {
      ws = new this._WebSocket(this._socketUrl(token));
    } catch (e) {
      this._emit("error", new ShardcastError("network", 0, `cannot open a WebSocket: ${e && e.message}`, { cause: e }));
      this._retry();
      return;
    }
    this._ws = ws;
    this._connectTimer = setTimeout(() => {
      // A connection that never opens (a black-holed network) ends like any lost one.
      if (this._ws === ws) this._socketClosed(ws, 1006, "connect timeout");
    }, this._connectTimeoutMs);
    ws.onopen = () => {
      if (this._ws !== ws) return;
      clearTimeout(this._connectTimer);
      this._setState("open");
      this._stableTimer = setTimeout(() => {
        this._failures = 0;
      }, this._reconnect ? this._reconnect.stableMs : 0);
      this._opened();
      this._emit("open", undefined);
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws || typeof ev.data !== "string") return;
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (m && typeof m === "object") this._frame(m);
    };
    ws.onerror = () => {
      // The close event that follows carries the code; the error event carries nothing.
    };
    ws.onclose = (ev) => {
      if (this._ws === ws) this._socketClosed(ws, ev.code, ev.reason || "");
    };
  }

  _socketClosed(ws, code, reason) {
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState !== 3) {
      try {
        ws.close();
      } catch {
        // Already closed.
      }
    }
    clearTimeout(this._connectTimer);
    clearTimeout(this._stableTimer);
    this._lost(code);

    let stop = null;
    let immediate = false;
    let replaced = false;
    if (code === CLOSE_POLICY && this._loginError === TOKEN_INVALID) {
      if (this._usingRefreshedToken) {
        stop = new ShardcastError("token", TOKEN_INVALID, "the token was refused, and so was a refreshed one");
      } else {
        this._needRefresh = true;
        immediate = true;
      }
    } else if (code === CLOSE_REPLACED) {
      replaced = true;
    } else if (code === 1000 || code === CLOSE_POLICY || (code >= 3000 && code <= 4999)) {
      // Deliberate closes: a refused login, a policy, an administrator's kick.
      stop = new ShardcastError("close", code, `closed by the broker with ${code}${reason ? `: ${reason}` : ""}`);
    }

    const willReconnect = !stop && !replaced && (immediate || this._reconnect !== null);
    let delayMs = null;
    if (willReconnect) delayMs = immediate ? 0 : this._backoff();
    if (!willReconnect) {
      this._gen++;
      this._listenNetwork(false);
      this._setState("closed");
    }
    this._emit("close", { code, reason, willReconnect, delayMs });
    if (replaced) this._emit("replaced", { code, reason });
    if (stop) this._emit("error", stop);
    if (willReconnect) this._schedule(delayMs);
  }

  // Full jitter: uniform in [0, min(max, base * 2^failures)).
  _backoff() {
    const r = this._reconnect || DEFAULT_RECONNECT;
    const ceiling = Math.min(r.maxMs, r.baseMs * 2 ** Math.min(this._failures, 30));
    this._failures++;
    return Math.floor(Math.random() * ceiling);
  }

  _retry() {
    if (!this._reconnect) {
      this._gen++;
      this._listenNetwork(false);
      this._setState("closed");
      return;
    }
    this._schedule(this._backoff());
  }

  _schedule(delayMs) {
    if (this._offline) {
      this._setState("offline");
      return;
    }
    this._setState("waiting");
    const gen = this._gen;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (gen === this._gen) this._attempt();
    }, delayMs);
  }

  async _freshToken() {
    const token = await this._getToken({ refresh: true });
    if (typeof token !== "string" || token === "") throw new TypeError("getToken returned no token");
    this._token = token;
    return token;
  }

  async _getJson(path, token) {
    if (!this._fetch) throw new TypeError("options.fetch: no global fetch; pass one");
    const res = await this._fetch(this._urls.http + path, {
      headers: { Authorization: `Bearer ${token}` },
    });
    try {
      return await res.json();
    } catch (e) {
      throw new ShardcastError("http", res.status, `HTTP ${res.status}: not a JSON answer`, { cause: e });
    }
  }

  _send(obj) {
    this._ws.send(JSON.stringify(obj));
  }

  // Hooks of the dialects.
  _socketUrl() {
    throw new Error("abstract");
  }
  _opened() {}
  _frame() {}
  _lost() {}
}

/** The notify dialect (docs/protocol.md §3): unread list, new notifications, read reports. */
export class NotifyClient extends BaseClient {
  constructor(options) {
    super(options);
    // Read reports made while disconnected, sent once the next login is confirmed.
    this._unsentReads = new Set();
    this._loggedIn = false;
  }

  _socketUrl(token) {
    return `${this._urls.ws}/?token=${encodeURIComponent(token)}`;
  }

  /** Reports notifications read (event 3): at most 100 ids a frame, more are split. */
  markRead(ids) {
    const list = (Array.isArray(ids) ? ids : [ids]).filter((id) => typeof id === "string" && id !== "");
    if (this._state === "open" && this._loggedIn) this._report(list);
    else for (const id of list) this._unsentReads.add(id);
  }

  _report(list) {
    for (let i = 0; i < list.length; i += MAX_IDS_PER_REPORT) {
      const chunk = list.slice(i, i + MAX_IDS_PER_REPORT);
      this._send({ event: 3, data: chunk.length === 1 ? { msg_id: chunk[0] } : { msg_ids: chunk } });
    }
  }

  _opened() {
    this._loggedIn = false;
  }

  _lost() {
    this._loggedIn = false;
  }

  _frame(m) {
    const data = m.data || {};
    if (m.event === 2) {
      // Event 2 confirms the login: frames sent before it would be dropped by a login
      // that is refused, so queued read reports go only now, and leave the list shown.
      this._loggedIn = true;
      const sent = [...this._unsentReads];
      this._unsentReads.clear();
      if (sent.length) this._report(sent);
      const gone = new Set(sent);
      const list = Array.isArray(data.msg_list) ? data.msg_list : [];
      this._emit("unread", gone.size ? list.filter((n) => !gone.has(n._id)) : list);
    } else if (m.event === 1 && data.msg) {
      this._emit("message", data.msg);
    } else if (m.event === 0) {
      if (data.code === TOKEN_INVALID) this._loginError = TOKEN_INVALID;
      else this._emit("error", new ShardcastError("server", data.code, data.error || "error"));
    }
  }
}

/** The chat dialect (docs/protocol.md §4): messages between users, acks, history. */
export class ChatClient extends BaseClient {
  constructor(options) {
    super(options);
    const o = options;
    for (const k of ["id", "domain", "resource"]) {
      if (o[k] !== undefined && !validName(o[k])) throw new TypeError(`options.${k}: 1..128 bytes, no control characters`);
    }
    if (o.id === undefined) throw new TypeError("options.id is required");
    this.id = o.id;
    this.name = o.name ?? o.id;
    this.domain = o.domain ?? "default";
    this.resource = o.resource ?? "web";
    this._ack = o.ack !== false;
    this._maxMessageBytes = o.maxMessageBytes ?? 65536;
    // Sends waiting for their answer, oldest first: { seq, resolve, reject }.
    this._pending = [];
    this._seq = 0;
    this._answeredSeq = 0;
  }

  _socketUrl(token) {
    const q = new URLSearchParams({ id: this.id, name: this.name, domain: this.domain, resource: this.resource, token });
    if (this._ack) q.set("ack", "1");
    return `${this._urls.ws}/ws?${q}`;
  }

  /**
   * Sends a message. With ack (the default) it resolves with the broker's acknowledgement
   * {id, sendAt, offline}; without, with null once handed to the socket.
   */
  send(toId, type, content) {
    let bad = null;
    if (!validName(toId)) bad = "toId: 1..128 bytes, no control characters";
    else if (!CHAT_TYPES.includes(type)) bad = "type: 10, 20, 30 or 40";
    else if (typeof content !== "string") bad = "content: a string";
    else if (encoder.encode(content).length > this._maxMessageBytes) bad = `content: more than ${this._maxMessageBytes} bytes`;
    if (bad) return Promise.reject(new ShardcastError("invalid", 2003, bad));
    if (this._state !== "open") {
      return Promise.reject(new ShardcastError("not_connected", 0, `not connected (${this._state})`));
    }
    this._send({ toId, type, content });
    if (!this._ack) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this._pending.push({ seq: ++this._seq, resolve, reject });
    });
  }

  /** One page of history (GET /message-log), newest first; toId defaults to this user. */
  async history(query) {
    const q = query || {};
    const params = new URLSearchParams({ domain: this.domain, toId: q.toId ?? this.id });
    if (q.fromId !== undefined) params.set("fromId", q.fromId);
    if (q.page !== undefined) params.set("page", String(q.page));
    if (q.size !== undefined) params.set("size", String(q.size));
    const path = `/message-log?${params}`;
    let token = this._token;
    if (token === null) {
      token = await this._getToken({ refresh: false });
      this._token = token;
    }
    let body = await this._getJson(path, token);
    if (body && body.code === TOKEN_INVALID) body = await this._getJson(path, await this._freshToken());
    if (!body || body.code !== 0) {
      throw new ShardcastError("http", body ? body.code : 0, (body && body.msg) || "history failed");
    }
    return body.content;
  }

  _lost(code) {
    const pending = this._pending;
    this._pending = [];
    for (const p of pending) {
      // The broker may have stored it before the connection went: history tells.
      p.reject(new ShardcastError("disconnected", code, `connection closed (${code}) before the broker answered`));
    }
  }

  _frame(m) {
    if (m.ack && typeof m.ack === "object") {
      this._answer(false)?.resolve(m.ack);
    } else if (typeof m.code === "number" && "error" in m) {
      if (m.code === TOKEN_INVALID) {
        this._loginError = TOKEN_INVALID;
        return;
      }
      const err = new ShardcastError("server", m.code, m.error || "error");
      const p = this._ack ? this._answer(READ_TIME_ERRORS.includes(m.code)) : null;
      if (p) p.reject(err);
      else this._emit("error", err);
    } else if (typeof m.fromId === "string" && "content" in m) {
      this._emit("message", m);
    }
  }

  // Which pending send a reply answers. Every send gets exactly one reply (an ack or an
  // error). Acks and the errors of storing (1009, 2000) come in send order, so they
  // answer the oldest pending send. An error given while the broker reads a frame (2001,
  // 2003, 2005) can overtake the acks of earlier sends, but never follows a reply to a
  // later one: it answers a send made after the newest one answered so far. The oldest
  // such send is taken, which is exact whenever that leaves one candidate (sends awaited
  // one at a time, or acks keeping up); send() checks its arguments itself so that
  // 2001/2003 do not arise, which leaves 2005 (rate limit) as the only guess.
  _answer(readTime) {
    let i = 0;
    if (readTime) {
      i = this._pending.findIndex((p) => p.seq > this._answeredSeq);
      if (i < 0) i = 0;
    }
    const [p] = this._pending.splice(i, 1);
    if (p && p.seq > this._answeredSeq) this._answeredSeq = p.seq;
    return p;
  }
}
