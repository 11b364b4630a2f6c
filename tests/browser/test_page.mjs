// Opens the server's /test page in headless Chromium and checks that it connects and
// shows live simulated events. Usage: node tests/browser/test_page.mjs http://127.0.0.1:PORT [screenshot.png]
// Exit status 0 when the page shows inventory:update and dashboard:data events.
import { chromium } from "playwright-core";

const base = process.argv[2];
const screenshot = process.argv[3];
if (!base) {
  console.error("usage: test_page.mjs BASE_URL [SCREENSHOT]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(`${base}/test`);
  // Generous timeouts: CI is a busy 2-core machine.
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 20000 });
  await page.waitForSelector('#log li[data-event="connection:established"]', { state: "attached", timeout: 20000 });
  await page.waitForSelector('#log li[data-event="inventory:update"]', { state: "attached", timeout: 20000 });
  await page.waitForSelector('#log li[data-event="dashboard:data"]', { state: "attached", timeout: 20000 });
  const updates = await page.locator('#log li[data-event="inventory:update"]').count();
  const subscribed = await page.locator('#log li[data-event="inventory:subscribed"]').count();
  if (subscribed !== 1) throw new Error(`expected one inventory:subscribed, saw ${subscribed}`);
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("; ")}`);
  if (screenshot) await page.screenshot({ path: screenshot });
  console.log(`test page ok: ${updates} inventory:update events shown`);
} finally {
  await browser.close();
}
