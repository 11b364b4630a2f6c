// Opens the server's /demo page in headless Chromium, checks that it connects, then
// publishes a stock change and a notification and waits for the page to show them.
// Usage: node tests/browser/demo_page.mjs http://127.0.0.1:PORT [screenshot.png]
import { chromium } from "playwright-core";

const base = process.argv[2];
const screenshot = process.argv[3];
if (!base) {
  console.error("usage: demo_page.mjs BASE_URL [SCREENSHOT]");
  process.exit(2);
}

async function publish(change) {
  const res = await fetch(`${base}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(change),
  });
  if (!res.ok) throw new Error(`POST /publish: ${res.status}`);
  return (await res.json()).seqs[0];
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(`${base}/demo`);
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 20000 });
  // The current stock is loaded, then rows update in place.
  await page.waitForSelector("#inventory tbody tr", { timeout: 20000 });
  // Subscriptions go out right after the connection; a change published now must show.
  await page.waitForFunction(() => document.querySelectorAll("#inventory tbody tr").length > 0, null, { timeout: 20000 });
  let seq = 0;
  for (let attempt = 0; attempt < 40; attempt++) {
    seq = await publish({ dataType: "inventory", data: { productId: "demo-product", warehouseId: "warehouse-9", category: "electronics", quantity: 7 } });
    const shown = await page.waitForSelector(`#inventory tr[data-key="demo-product/warehouse-9"][data-seq="${seq}"]`, { state: "attached", timeout: 500 }).catch(() => null);
    if (shown) break;
  }
  const row = page.locator('#inventory tr[data-key="demo-product/warehouse-9"]');
  const quantity = await row.locator("td").nth(3).textContent();
  if (quantity !== "7") throw new Error(`stock row shows ${quantity}`);
  if ((await row.getAttribute("data-seq")) !== String(seq)) throw new Error("stock row is not the published change");
  // The low-stock alert (7 is under the threshold) reaches the notification feed.
  await page.waitForSelector('#notifications li[data-type="low_stock"]', { state: "attached", timeout: 20000 });
  await page.waitForFunction(() => Number(document.getElementById("rate").dataset.rate || 0) > 0, null, { timeout: 20000 });
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("; ")}`);
  if (screenshot) await page.screenshot({ path: screenshot });
  console.log(`demo page ok: seq ${seq} shown`);
} finally {
  await browser.close();
}
