// Drives the server's page in headless Chromium (see tools/page_screenshot.sh).
const { chromium } = require("playwright-core");

(async () => {
  const [url, out] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
    const external = [];
    page.on("request", (r) => { if (!r.url().startsWith(url) && !r.url().startsWith("blob:")) external.push(r.url()); });
    await page.goto(url);
    await page.setInputFiles("#content", "examples/content.png");
    await page.setInputFiles("#style", "examples/style.png");
    await page.selectOption("#preset", "fast");
    await page.fill("#gamma", "0.4");
    await page.click("#go");
    await page.waitForFunction(() => /^(Done|Error)/.test(document.getElementById("status").textContent), null, { timeout: 120000 });
    const status = await page.textContent("#status");
    const width = await page.$eval("#result", (img) => img.naturalWidth);
    if (!status.startsWith("Done") || width === 0) throw new Error(`no result: status "${status}", width ${width}`);
    if (external.length) throw new Error(`the page fetched external assets: ${external.join(", ")}`);
    await page.screenshot({ path: out, fullPage: true });
    console.log(`${status} result ${width}x${width}px`);
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
