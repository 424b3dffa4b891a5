// Test driver (tests/test_web.py): drives the page that `ms-ddpm web` serves in headless Chromium through
// playwright-core, with the page's ?test=1 hook. Chromium: $CHROMIUM, else /usr/bin/chromium (Debian's).
//
//   node drive.mjs generate URL OUT N SEED   press Generate; OUT/ gets result.f32 (the float batch), canvas.png,
//                                            download.png (the Download button's file), page.png and canvas-shot.png
//                                            (screenshots of the page and of the canvas),
//                                            report.json (backend, cores, timings, per-step ms, every response's size)
//   node drive.mjs load URL OUT              wait until the page is ready or shows an error; OUT/report.json
//   node drive.mjs noise URL OUT COUNT SEED...  the page's noise.mjs: OUT/normals-SEED.f32, the first COUNT normals
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const TIMEOUT_MS = 120_000;

async function open(url) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
  });
  const page = await browser.newPage({ acceptDownloads: true });
  const log = { responses: [], console: [] };
  page.on("console", (message) => log.console.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => log.console.push(`pageerror: ${error.message}`));
  page.on("response", (response) => {
    const headers = response.headers();
    log.responses.push({ url: response.url(), status: response.status(), type: headers["content-type"] ?? "",
                         bytes: Number(headers["content-length"] ?? NaN) });
  });
  const address = new URL(url);
  address.searchParams.set("test", "1");
  const start = Date.now();
  await page.goto(address.href);
  log.gotoMs = Date.now() - start;
  return { browser, page, log };
}

// Waits until the test hook's state is one of `states`; returns the hook (without the float result).
async function until(page, states) {
  await page.waitForFunction((wanted) => wanted.includes(window.msDdpmTest?.state), states, { timeout: TIMEOUT_MS });
  return page.evaluate(() => ({ ...window.msDdpmTest, result: undefined }));
}

// Numbers that were float32 in the page (exact as JSON doubles) -> raw little-endian float32 bytes.
function float32(values) {
  return Buffer.from(Float32Array.from(values).buffer);
}

async function generate(url, out, n, seed) {
  const { browser, page, log } = await open(url);
  try {
    const ready = await until(page, ["ready", "error"]);
    if (ready.state === "ready") {
      await page.fill("#count", n);
      await page.fill("#seed", seed);
      await page.click("#generate");
      Object.assign(ready, await until(page, ["done", "error"]));
    }
    if (ready.state === "done") {
      const result = await page.evaluate(() => Array.from(window.msDdpmTest.result));
      writeFileSync(join(out, "result.f32"), float32(result));
      const canvas = await page.evaluate(() => document.getElementById("canvas").toDataURL("image/png"));
      writeFileSync(join(out, "canvas.png"), Buffer.from(canvas.split(",")[1], "base64"));
      const [saved] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
      await saved.saveAs(join(out, "download.png"));
      log.downloadName = saved.suggestedFilename();
      await page.locator("#canvas").screenshot({ path: join(out, "canvas-shot.png") });
    }
    await page.screenshot({ path: join(out, "page.png"), fullPage: true });
    Object.assign(log, await page.evaluate(() => ({ isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency })));
    writeFileSync(join(out, "report.json"), JSON.stringify({ ...ready, ...log }, null, 2));
  } finally {
    await browser.close();
  }
}

async function load(url, out) {
  const { browser, page, log } = await open(url);
  try {
    const state = await until(page, ["ready", "error"]);
    log.errorText = await page.textContent("#error");
    writeFileSync(join(out, "report.json"), JSON.stringify({ ...state, ...log }, null, 2));
  } finally {
    await browser.close();
  }
}

async function noise(url, out, count, seeds) {
  const { browser, page } = await open(url);
  try {
    for (const seed of seeds) {
      const result = await page.evaluate(async ([seedText, size]) => {
        const { NoiseStream } = await import(new URL("noise.mjs", document.baseURI).href);
        return Array.from(new NoiseStream(BigInt(seedText)).draw(size));
      }, [seed, count]);
      writeFileSync(join(out, `normals-${seed}.f32`), float32(result));
    }
  } finally {
    await browser.close();
  }
}

const [mode, url, out, ...rest] = process.argv.slice(2);
if (mode === "generate" && rest.length === 2) await generate(url, out, ...rest);
else if (mode === "load" && rest.length === 0) await load(url, out);
else if (mode === "noise" && rest.length >= 2) await noise(url, out, Number(rest[0]), rest.slice(1));
else {
  console.error("usage: node drive.mjs generate URL OUT N SEED | load URL OUT | noise URL OUT COUNT SEED...");
  process.exit(2);
}
