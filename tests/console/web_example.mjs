// Drives examples/web in headless Chromium (started by tests/web_example.rs with a live
// broker and `node examples/web/server.js`): connect as a user (the page fetches its
// tokens from the example's signing endpoint), ask the example's backend for a push and a
// chat message, and see both on the page. Any failed step exits non-zero.
// Usage: node web_example.mjs EXAMPLE_URL UID OUT_DIR
import { chromium } from "playwright-core";

const [base, uid, out] = process.argv.slice(2);
const step = (name) => console.log(`web example test: ${name}`);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(`console: ${m.text()}`); });

  step("open the page and connect (tokens from the example's backend)");
  await page.goto(base);
  await page.getByTestId("uid").fill(uid);
  await page.getByTestId("connect").click();
  await page.getByTestId("status").filter({ hasText: `Connected as ${uid}` }).waitFor();

  step("a push through the example's backend is shown");
  const pushText = `Parcel ${Date.now()} has shipped.`;
  await page.getByTestId("push-text").fill(pushText);
  await page.getByTestId("push").click();
  await page.getByTestId("notification").filter({ hasText: `Hello: ${pushText}` }).waitFor();

  step("a chat message through the example's backend is shown");
  const chatText = `Hi ${uid}, message ${Date.now()}`;
  await page.getByTestId("chat-text").fill(chatText);
  await page.getByTestId("chat").click();
  await page.getByTestId("message").filter({ hasText: `Support: ${chatText}` }).waitFor();

  step("screenshot");
  await page.screenshot({ path: `${out}/web-example.png`, fullPage: true });
  const log = await page.getByTestId("log").textContent();
  if (/error:/.test(log)) throw new Error(`the page logged an error: ${log}`);
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("; ")}`);
  step("all steps passed");
} catch (e) {
  console.error(`web example test FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
