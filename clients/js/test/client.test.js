// The client against the real broker binary: no mocks. Each describe block runs its own
// broker (test/broker.js); every wait is bounded and every process is stopped in `after`.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { ChatClient, NotifyClient, ShardcastError } from "../src/shardcast.js";
import { Broker, next, sign, sleep, within } from "./broker.js";

if (typeof WebSocket !== "function") {
  throw new Error("run with node --experimental-websocket (npm test does)");
}

const T = { timeout: 60000 };
const FAST = { baseMs: 50, maxMs: 400, stableMs: 2000 };

const clients = [];
after(() => {
  for (const c of clients) c.close();
});

/** A client whose token provider issues a fresh token each call and records `refresh`. */
function track(c, calls) {
  c.calls = calls;
  clients.push(c);
  return c;
}

function notify(broker, uid, options = {}) {
  const calls = [];
  return track(
    new NotifyClient({
      url: broker.base,
      WebSocket,
      getToken: async ({ refresh }) => {
        calls.push(refresh);
        return broker.token(uid);
      },
      reconnect: FAST,
      ...options,
    }),
    calls,
  );
}

function chat(broker, id, options = {}) {
  const calls = [];
  const domain = options.domain ?? "shop";
  return track(
    new ChatClient({
      url: broker.base,
      WebSocket,
      id,
      name: `Name ${id}`,
      domain,
      resource: "web",
      getToken: async ({ refresh }) => {
        calls.push(refresh);
        return broker.token(id, domain);
      },
      reconnect: FAST,
      ...options,
    }),
    calls,
  );
}

/** Connects and waits for the login to be confirmed (notify: the unread list). */
async function connected(c) {
  const p = c instanceof NotifyClient ? next(c, "unread") : next(c, "open");
  c.connect();
  return p;
}

/** Retries `f` until it stops throwing, for at most `ms`. */
async function eventually(f, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await f();
    } catch (e) {
      if (Date.now() > end) throw e;
      await sleep(50);
    }
  }
}

test("the sign matches docs/protocol.md's test vectors", () => {
  assert.equal(sign("user_1", "1630485655", "s3cr3t"), "f91db928eb8e4f0c849d762a4e8f0e52");
  assert.equal(sign("用户_7", "1700000000", "change-me"), "2132f2f8202eb9869032107dde219f84");
  assert.equal(sign("user_1", "1630485655", "s3cr3t", "shop"), "e325db92fcc0abc4bc694aeadb7060cc");
  assert.equal(sign("用户_7", "1700000000", "change-me", "商城"), "e64434185ae4ffa48c42c8340af66c17");
});

describe("notify dialect", () => {
  const b = new Broker();
  before(() => b.start());
  after(() => b.stop());

  test("a push arrives as a message event", T, async () => {
    const c = notify(b, "alice");
    assert.deepEqual(await connected(c), []);
    const got = next(c, "message");
    const pushed = await b.push(["alice"], "测试消息", "消息内容");
    const m = await got;
    assert.equal(m._id, pushed._id);
    assert.equal(m.title, "测试消息");
    assert.equal(m.content, "消息内容");
    assert.equal(m.create_time, pushed.create_time);
    assert.deepEqual(c.calls, [false]);
  });

  test("read reports go 100 ids a frame; after a reconnect the unread list lacks them", T, async () => {
    const ids = [];
    for (let i = 0; i < 152; i++) ids.push((await b.push(["reader"], `n${i}`, "body"))._id);
    const sent = [];
    class Recording extends WebSocket {
      send(data) {
        sent.push(JSON.parse(data));
        super.send(data);
      }
    }
    const c = notify(b, "reader", { WebSocket: Recording });
    const unread = await connected(c);
    assert.deepEqual(
      unread.map((n) => n._id),
      ids,
    );
    c.markRead(ids.slice(0, 150));
    c.markRead(ids[150]);
    assert.deepEqual(
      sent.map((f) => [f.event, f.data.msg_ids?.length ?? f.data.msg_id]),
      [
        [3, 100],
        [3, 50],
        [3, ids[150]],
      ],
    );
    assert.deepEqual(sent[0].data.msg_ids.concat(sent[1].data.msg_ids), ids.slice(0, 150));
    c.close();
    // Read reports are silent: poll with new connections until the broker has applied them.
    await eventually(async () => {
      const again = notify(b, "reader");
      try {
        const list = await connected(again);
        assert.deepEqual(
          list.map((n) => n._id),
          [ids[151]],
        );
      } finally {
        again.close();
      }
    });
  });

  test("reads reported while disconnected are sent after the next login", T, async () => {
    const pushed = await b.push(["later"], "t", "c");
    const c = notify(b, "later");
    c.markRead(pushed._id);
    assert.deepEqual(await connected(c), [], "left out of the list that the login sent");
    c.close();
    await eventually(async () => {
      const again = notify(b, "later");
      try {
        assert.deepEqual(await connected(again), []);
      } finally {
        again.close();
      }
    });
  });

  test("an error frame (event 0) is an error event; the connection stays open", T, async () => {
    const c = notify(b, "erin");
    await connected(c);
    const err = next(c, "error");
    c.markRead("ffffffffffffffffffffffff");
    const e = await err;
    assert.ok(e instanceof ShardcastError);
    assert.equal(e.kind, "server");
    assert.equal(e.code, 2004);
    assert.equal(c.state, "open");
  });

  test("offline: no attempt until the network is back, then at once", T, async () => {
    const network = new EventTarget();
    network.navigator = { onLine: false };
    const c = notify(b, "olive", { network, reconnect: { baseMs: 60000, maxMs: 60000 } });
    c.connect();
    assert.equal(c.state, "offline");
    await sleep(300);
    assert.deepEqual(c.calls, []);
    network.navigator.onLine = true;
    const unread = next(c, "unread", undefined, 3000);
    network.dispatchEvent(new Event("online"));
    await unread;
    assert.deepEqual(c.calls, [false]);
  });

  test("close() stops: no reconnect afterwards", T, async () => {
    const c = notify(b, "carl");
    await connected(c);
    const closed = next(c, "close");
    c.close();
    assert.deepEqual(await closed, { code: 1000, reason: "closed by the client", willReconnect: false, delayMs: null });
    assert.equal(c.state, "closed");
    await sleep(300);
    assert.deepEqual(c.calls, [false]);
  });
});

describe("chat dialect", () => {
  const b = new Broker();
  before(() => b.start());
  after(() => b.stop());

  test("a message is delivered and acknowledged", T, async () => {
    const bob = chat(b, "bob");
    const alice = chat(b, "alice");
    await connected(bob);
    await connected(alice);
    const got = next(bob, "message");
    const ack = await within(alice.send("bob", 10, "hello bob"), "the ack");
    const m = await got;
    assert.equal(ack.offline, false);
    assert.match(ack.id, /^[0-9a-f]{24}$/);
    assert.equal(m.id, ack.id);
    assert.equal(m.sendAt, ack.sendAt);
    assert.equal(m.offline, false);
    assert.deepEqual(
      [m.fromId, m.fromName, m.fromResource, m.toId, m.domain, m.type, m.content],
      ["alice", "Name alice", "web", "bob", "shop", 10, "hello bob"],
    );
  });

  test("acks come in send order", T, async () => {
    const alice = chat(b, "amy");
    await connected(alice);
    const acks = await within(
      Promise.all([1, 2, 3, 4, 5].map((i) => alice.send("zed", 10, `m${i}`))),
      "five acks",
    );
    const ids = acks.map((a) => a.id);
    assert.deepEqual([...ids].sort(), ids, "ids grow with send order");
    const page = await alice.history({ toId: "zed", fromId: "amy", size: 5 });
    assert.deepEqual(
      page.list.map((m) => [m.id, m.content]),
      acks.map((a, i) => [a.id, `m${i + 1}`]).reverse(),
    );
  });

  test("a message to an offline user is acknowledged offline and delivered at login", T, async () => {
    const alice = chat(b, "alice2");
    await connected(alice);
    const ack = await within(alice.send("carol", 20, "while you were away"), "the ack");
    assert.equal(ack.offline, true);
    const carol = chat(b, "carol");
    const got = next(carol, "message");
    carol.connect();
    const m = await got;
    assert.equal(m.id, ack.id);
    assert.equal(m.offline, true);
    assert.equal(m.content, "while you were away");
  });

  test("history over /message-log with the token as Bearer", T, async () => {
    const dan = chat(b, "dan");
    const eve = chat(b, "eve");
    await connected(dan);
    const a1 = await dan.send("eve", 10, "first");
    const a2 = await dan.send("eve", 10, "second");
    const page = await eve.history({ size: 10 });
    assert.equal(page.total, 2);
    assert.deepEqual(
      page.list.map((m) => [m.id, m.content, m.toId]),
      [
        [a2.id, "second", "eve"],
        [a1.id, "first", "eve"],
      ],
    );
    const sent = await dan.history({ toId: "eve", fromId: "dan", page: 2, size: 1 });
    assert.deepEqual([sent.page, sent.size, sent.total, sent.list[0].id], [2, 1, 2, a1.id]);
    // Dan's valid token does not grant Eve's history: 1010, which no token refresh changes.
    await assert.rejects(dan.history({ toId: "eve" }), (e) => e instanceof ShardcastError && e.kind === "http" && e.code === 1010);
  });

  test("a second login on the same resource: the first gets 'replaced' and stays closed", T, async () => {
    const first = chat(b, "frank");
    await connected(first);
    const replaced = next(first, "replaced");
    const closed = next(first, "close");
    const second = chat(b, "frank");
    await connected(second);
    assert.deepEqual(await replaced, { code: 4000, reason: (await closed).reason });
    assert.deepEqual((await closed).willReconnect, false);
    assert.equal(first.state, "closed");
    await sleep(800);
    assert.deepEqual(first.calls, [false], "no reconnection");
    assert.equal(second.state, "open");
    const presence = await b.presence("frank", "shop");
    assert.equal(presence.connections.length, 1);
  });

  test("bad arguments and sends while disconnected are refused locally", T, async () => {
    const c = chat(b, "gina");
    await assert.rejects(c.send("x", 10, "hi"), (e) => e.kind === "not_connected");
    await connected(c);
    await assert.rejects(c.send("x", 100, "hi"), (e) => e.kind === "invalid" && e.code === 2003);
    await assert.rejects(c.send("", 10, "hi"), (e) => e.kind === "invalid");
    await assert.rejects(c.send("x", 10, "é".repeat(40000)), (e) => e.kind === "invalid");
  });
});

describe("errors answering sends (max_messages_per_sec = 3)", () => {
  const b = new Broker({ max_messages_per_sec: "3" });
  before(() => b.start());
  after(() => b.stop());

  test("a rate-limited send is rejected with 2005 and later sends are acked", T, async () => {
    const c = chat(b, "hank");
    await connected(c);
    const outcomes = [];
    for (let i = 0; i < 8; i++) {
      outcomes.push(
        await within(
          c.send("ivy", 10, `m${i}`).then(
            (a) => `ack ${a.id.length}`,
            (e) => `${e.kind} ${e.code}`,
          ),
          "an answer",
        ),
      );
    }
    assert.ok(outcomes.includes("server 2005"), outcomes.join(", "));
    assert.ok(outcomes.every((o) => o === "ack 24" || o === "server 2005"), outcomes.join(", "));
    await sleep(1100);
    const ack = await within(c.send("ivy", 10, "after the window"), "the ack");
    assert.equal(ack.offline, true);
    assert.equal(c.state, "open");
  });

  test("pipelined sends under the limit each settle exactly once", T, async () => {
    const c = chat(b, "jack");
    await connected(c);
    await sleep(1100);
    const settled = await within(
      Promise.allSettled([0, 1, 2, 3, 4, 5, 6, 7].map((i) => c.send("ivy", 10, `p${i}`))),
      "eight answers",
    );
    const acked = settled.filter((s) => s.status === "fulfilled").length;
    const limited = settled.filter((s) => s.status === "rejected" && s.reason.code === 2005).length;
    assert.equal(acked + limited, 8);
    assert.ok(acked >= 3 && acked <= 6, `acked ${acked}`);
  });
});

describe("reconnection", () => {
  const b = new Broker();
  before(() => b.start());
  after(() => b.stop());

  test("after the broker restarts on the same port, the client reconnects by itself", T, async () => {
    const c = notify(b, "rita");
    await connected(c);
    const lost = next(c, "close");
    await b.terminate();
    const close = await lost;
    assert.equal(close.code, 1001);
    assert.equal(close.willReconnect, true);
    await sleep(300); // a few attempts meet a closed port
    const back = next(c, "unread", undefined, 15000);
    await b.start();
    await back;
    const got = next(c, "message");
    const pushed = await b.push(["rita"], "after restart", "still here");
    assert.equal((await got)._id, pushed._id);
    assert.ok(c.calls.length >= 2 && c.calls.every((r) => r === false), `${c.calls}`);
  });
});

describe("token refresh (token_ttl_secs = 2)", () => {
  const b = new Broker({ token_ttl_secs: "2" });
  before(() => b.start());
  after(() => b.stop());

  test("an expired token is refreshed after 1004, then the client reconnects", T, async () => {
    let cached = null;
    const calls = [];
    const c = track(
      new NotifyClient({
        url: b.base,
        WebSocket,
        reconnect: FAST,
        getToken: async ({ refresh }) => {
          calls.push(refresh);
          if (cached === null || refresh) cached = await b.token("tina");
          return cached;
        },
      }),
      calls,
    );
    await connected(c);
    await sleep(3200); // the cached token has expired; the connection is unaffected
    const closes = [];
    c.on("close", (x) => closes.push(x));
    const back = next(c, "unread", undefined, 15000);
    await b.terminate();
    await b.start();
    await back;
    assert.equal(calls.filter((r) => r).length, 1, `${calls}`);
    assert.equal(calls.at(-1), true);
    const refused = closes.find((x) => x.code === 1008);
    assert.deepEqual(refused, { code: 1008, reason: refused.reason, willReconnect: true, delayMs: 0 });
    const got = next(c, "message");
    await b.push(["tina"], "fresh", "token");
    await got;
  });

  test("a refreshed token that is refused as well stops the client", T, async () => {
    const calls = [];
    const c = track(
      new ChatClient({
        url: b.base,
        WebSocket,
        id: "ted",
        reconnect: FAST,
        getToken: async ({ refresh }) => {
          calls.push(refresh);
          return "0123456789abcdef0123456789abcdef";
        },
      }),
      calls,
    );
    const err = next(c, "error");
    c.connect();
    const e = await err;
    assert.equal(e.kind, "token");
    assert.equal(e.code, 1004);
    assert.equal(c.state, "closed");
    await sleep(500);
    assert.deepEqual(calls, [false, true]);
  });
});
