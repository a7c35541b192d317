// Drives GET /console in headless Chromium against a live broker (started by
// tests/console.rs): connect with a token, receive a push and show it, mark it read (and
// find it gone after reconnecting), chat to a second client and see it delivered, page
// the history, see the live view, and save screenshots. Any failed step exits non-zero.
// Usage: node console.mjs BASE_URL ADMIN_KEY ALICE_TOKEN BOB_TOKEN OUT_DIR
import { chromium } from "playwright-core";

const [base, admin, aliceToken, bobToken, out] = process.argv.slice(2);
const step = (name) => console.log(`console test: ${name}`);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const desk = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const a = await desk.newPage();
  a.setDefaultTimeout(15000);
  const pageErrors = [];
  // Uncaught exceptions and anything the browser logs as an error (a failed request, a
  // missing icon) fail the test: the console must load and run cleanly.
  const watch = (page) => {
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") pageErrors.push(`console: ${m.text()}`); });
  };
  watch(a);

  step("open /console and connect (notify)");
  await a.goto(`${base}/console`);
  await a.getByLabel("Dialect").selectOption("notify");
  await a.getByTestId("token").fill(aliceToken);
  await a.getByTestId("connect").click();
  await a.getByTestId("unread-summary").first().filter({ hasText: "No unread notifications." }).waitFor();

  step("a push appears as a card");
  const push = await fetch(`${base}/push`, {
    method: "POST",
    headers: { Authorization: `Bearer ${admin}` },
    body: JSON.stringify({ uids: ["alice"], title: "Hello from the test", content: "Your parcel has shipped." }),
  }).then((r) => r.json());
  if (push.code !== 0) throw new Error(`push failed: ${JSON.stringify(push)}`);
  const card = a.getByTestId("notification").filter({ hasText: "Hello from the test" });
  await card.waitFor();
  if (!(await card.textContent()).includes("Your parcel has shipped.")) throw new Error("card without content");
  if ((await card.getAttribute("data-id")) !== push.content._id) throw new Error("card id differs from the push");

  step("mark it read; after a reconnect it is no longer unread");
  await card.getByTestId("mark-read").click();
  await a.locator(`[data-id="${push.content._id}"].read`).waitFor();
  await a.getByTestId("disconnect").click();
  await a.getByTestId("closed").first().filter({ hasText: "1000" }).waitFor();
  await a.getByTestId("connect").click();
  await a.getByTestId("status").filter({ hasText: "Connected" }).waitFor();
  const summary = a.getByTestId("unread-summary").first();
  await summary.waitFor();
  if ((await summary.textContent()) !== "No unread notifications.") throw new Error(`still unread: ${await summary.textContent()}`);

  step("chat: alice to bob, delivered and acknowledged");
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const b = await phone.newPage();
  b.setDefaultTimeout(15000);
  watch(b);
  for (const [page, id, name, token] of [[a, "alice", "Alice", aliceToken], [b, "bob", "Bob", bobToken]]) {
    if (page === b) await b.goto(`${base}/console`);
    await page.getByLabel("Dialect").selectOption("chat");
    await page.getByTestId("chat-id").fill(id);
    await page.getByTestId("chat-name").fill(name);
    await page.getByTestId("token").fill(token);
    await page.getByTestId("connect").click();
    await page.getByTestId("status").filter({ hasText: "Connected (chat)" }).waitFor();
  }
  await a.getByTestId("to-id").fill("bob");
  await a.getByTestId("content").fill("hi bob, from the console");
  await a.getByTestId("send").click();
  await b.getByTestId("chat-in").filter({ hasText: "hi bob, from the console" }).waitFor();
  if (!(await b.getByTestId("chat-in").first().textContent()).includes("Alice")) throw new Error("sender name missing");
  await a.locator('[data-testid="chat-out"]:not([data-pending])').filter({ hasText: "hi bob" }).waitFor();

  step("history page of the connected user");
  await b.getByTestId("hist-load").click();
  await b.getByTestId("hist-rows").filter({ hasText: "hi bob, from the console" }).waitFor();

  step("live view: connections per shard");
  await a.getByTestId("live-conns").filter({ hasText: /shard 0: \d+/ }).waitFor();

  step("screenshots");
  await a.screenshot({ path: `${out}/console-desktop.png`, fullPage: true });
  await b.screenshot({ path: `${out}/console-phone.png`, fullPage: true });
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("; ")}`);
  step("all steps passed");
} catch (e) {
  console.error(`console test FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
