#!/usr/bin/env node
// Headless-Chromium tests of the browser build (trunk's dist/), WebGPU on SwiftShader.
//
//   scripts/build-web.sh && node tests/browser/run.mjs
//
// Tests:
//   1. /?autorun=1&steps=S   the demo page trains S steps in its worker; loss must go down
//   2. /examples/embed.html  the embeddable module: train, evaluate, export the model
//   3. no WebGPU             a browser without --enable-unsafe-webgpu shows the clear message,
//                            and DpoTrainer.create() rejects with WebGpuUnavailableError
// Prints "<n> passed, <m> failed" last; exits non-zero on any failure. Everything is bounded
// by timeouts.
//
// Environment (all optional):
//   DPO_DIST            folder to serve (default: dist/ at the repo root)
//   CHROMIUM            browser binary (default: /usr/bin/chromium)
//   DPO_TEST_STEPS      steps for test 1 (default 12)
//   DPO_EMBED_STEPS     steps for test 2 (default 8)
//   DPO_TEST_TIMEOUT_S  limit for test 1 in seconds (default 480); test 2 gets the same
//   DPO_TOTAL_TIMEOUT_S hard limit for the whole run (default 1500)
//   DPO_VERBOSE=1       also forward the browser's console.log/info lines

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const DIST = path.resolve(process.env.DPO_DIST ?? path.join(root, "dist"));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const STEPS = Number(process.env.DPO_TEST_STEPS ?? 12);
const EMBED_STEPS = Number(process.env.DPO_EMBED_STEPS ?? 8);
const TEST_TIMEOUT_S = Number(process.env.DPO_TEST_TIMEOUT_S ?? 480);
const TOTAL_TIMEOUT_S = Number(process.env.DPO_TOTAL_TIMEOUT_S ?? 1500);
const VERBOSE = process.env.DPO_VERBOSE === "1";

const BASE_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-dev-shm-usage",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];
const WEBGPU_ARGS = ["--enable-unsafe-webgpu"];

const t0 = Date.now();
const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1);
const log = (...a) => console.log(`[${elapsed()}s]`, ...a);

// Hard stop: whatever hangs, the run ends.
const watchdog = setTimeout(() => {
  console.log(`FAIL: the whole run exceeded ${TOTAL_TIMEOUT_S} s; aborting`);
  console.log("0 passed, 3 failed");
  process.exit(2);
}, TOTAL_TIMEOUT_S * 1000);

// ---------------------------------------------------------------------------------------------
// Static file server over dist/.

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".txt": "text/plain; charset=utf-8",
  ".ts": "text/plain; charset=utf-8",
  ".map": "application/json; charset=utf-8",
};

function startServer(dir) {
  const server = http.createServer((req, res) => {
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, "http://x").pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    let file = path.join(dir, pathname);
    if (!file.startsWith(dir + path.sep) && file !== dir) {
      res.writeHead(403).end();
      return;
    }
    fs.stat(file, (err, st) => {
      if (!err && st.isDirectory()) {
        file = path.join(file, "index.html");
        try {
          st = fs.statSync(file);
        } catch (e) {
          err = e;
        }
      }
      if (err || !st.isFile()) {
        console.log(`  server: 404 ${req.method} ${pathname}`);
        res.writeHead(404, { "content-type": "text/plain" }).end("not found");
        return;
      }
      res.writeHead(200, {
        "content-type": MIME[path.extname(file).toLowerCase()] ?? "application/octet-stream",
        "content-length": st.size,
        "cache-control": "no-store",
      });
      if (req.method === "HEAD") res.end();
      else fs.createReadStream(file).pipe(res);
    });
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

// ---------------------------------------------------------------------------------------------
// Helpers.

const withTimeout = (promise, ms, what) =>
  Promise.race([
    promise,
    new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`${what}: timed out after ${ms / 1000} s`)), ms).unref(),
    ),
  ]);

async function launch(args) {
  return withTimeout(
    chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 60_000 }),
    90_000,
    "launching Chromium",
  );
}

async function closeBrowser(browser) {
  if (!browser) return;
  try {
    await withTimeout(browser.close(), 15_000, "closing Chromium");
  } catch (e) {
    log(`warning: ${e.message}`);
  }
}

function forwardConsole(page, tag) {
  page.on("console", (msg) => {
    const type = msg.type();
    if (type === "error" || type === "warning" || VERBOSE) {
      console.log(`  [${tag} console.${type}] ${msg.text()}`);
    }
  });
  page.on("pageerror", (err) => console.log(`  [${tag} pageerror] ${err.message}`));
  page.on("crash", () => console.log(`  [${tag}] PAGE CRASHED`));
  page.on("worker", (w) => {
    if (VERBOSE) console.log(`  [${tag}] worker started: ${w.url()}`);
  });
}

// Polls `probe` in the page until it returns {done: true, ...}, printing progress lines.
async function pollPage(page, probe, { timeoutMs, every = 2000, progress }) {
  const deadline = Date.now() + timeoutMs;
  let lastProgress = "";
  for (;;) {
    const state = await withTimeout(page.evaluate(probe), 30_000, "page.evaluate");
    if (state.done) return state;
    const p = progress?.(state);
    if (p && p !== lastProgress) {
      log(`  ${p}`);
      lastProgress = p;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000} s (last: ${lastProgress || "no progress"})`);
    }
    await new Promise((r) => setTimeout(r, every));
  }
}

const isNum = (x) => typeof x === "number" && Number.isFinite(x);
function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

// ---------------------------------------------------------------------------------------------
// Tests.

async function testDemoPage(browser, base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  forwardConsole(page, "demo");
  try {
    const started = Date.now();
    await page.goto(`${base}/?autorun=1&steps=${STEPS}`, { timeout: 60_000 });
    const state = await pollPage(
      page,
      () => ({
        done: Boolean(window.dpoResult || window.dpoError),
        result: window.dpoResult ?? null,
        error: window.dpoError ?? null,
        status: document.getElementById("status")?.textContent ?? "",
        step: document.getElementById("step")?.textContent ?? "",
        loss: document.getElementById("loss")?.textContent ?? "",
      }),
      {
        timeoutMs: TEST_TIMEOUT_S * 1000,
        progress: (s) => `${s.status} step ${s.step} loss ${s.loss}`,
      },
    );
    const wall = (Date.now() - started) / 1000;
    if (state.error) throw new Error(`page reported an error: ${state.error}`);
    const r = state.result;
    log(`  dpoResult: ${JSON.stringify(r)}`);
    const resultText = await page.textContent("#result");
    assert(resultText && JSON.parse(resultText).steps === r.steps, "#result holds the same JSON");
    assert(r.steps === STEPS, `steps == ${STEPS} (got ${r.steps})`);
    for (const k of ["loss_first", "loss_last", "accuracy_last", "train_accuracy_last"]) {
      assert(isNum(r[k]), `${k} is a finite number (got ${r[k]})`);
    }
    assert(r.loss_last < r.loss_first, `loss_last (${r.loss_last}) < loss_first (${r.loss_first})`);
    assert(r.accuracy_last >= 0 && r.accuracy_last <= 1, "accuracy_last in [0, 1]");
    return {
      detail:
        `${r.steps} steps, loss ${r.loss_first.toFixed(4)} -> ${r.loss_last.toFixed(4)}, ` +
        `held-out acc ${r.eval_accuracy_before?.toFixed(3)} -> ${r.accuracy_last.toFixed(3)}, ` +
        `train acc (last batch) ${r.train_accuracy_last.toFixed(3)}; ` +
        `${r.seconds_per_step?.toFixed(2)} s/step (Rust-timed; first step ${r.seconds_first_step?.toFixed(2)} s, ` +
        `wall ${r.wall_seconds_per_step?.toFixed(2)} s/step), page total ${wall.toFixed(1)} s ` +
        `on ${r.device}`,
    };
  } finally {
    await context.close().catch(() => {});
  }
}

async function testEmbed(browser, base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  forwardConsole(page, "embed");
  try {
    const started = Date.now();
    await page.goto(`${base}/examples/embed.html?steps=${EMBED_STEPS}`, { timeout: 60_000 });
    const state = await pollPage(
      page,
      () => ({
        done: Boolean(window.embedResult || window.embedError),
        result: window.embedResult ?? null,
        error: window.embedError ?? null,
        log: (document.getElementById("log")?.textContent ?? "").trim().split("\n").pop(),
      }),
      { timeoutMs: TEST_TIMEOUT_S * 1000, progress: (s) => s.log },
    );
    const wall = (Date.now() - started) / 1000;
    if (state.error) throw new Error(`page reported an error: ${state.error}`);
    const r = state.result;
    log(`  embedResult: ${JSON.stringify(r)}`);
    assert(r.steps === EMBED_STEPS, `steps == ${EMBED_STEPS} (got ${r.steps})`);
    assert(isNum(r.loss_first) && isNum(r.loss_last), "finite losses");
    assert(r.loss_last < r.loss_first, `loss_last (${r.loss_last}) < loss_first (${r.loss_first})`);
    assert(isNum(r.eval_accuracy), `eval_accuracy is a finite number (got ${r.eval_accuracy})`);
    for (const f of ["config.json", "model.safetensors", "tokenizer.json"]) {
      assert(r.exported_files.includes(f), `exported_files include ${f} (got ${r.exported_files})`);
    }
    assert(r.safetensors_bytes > 0, "safetensors_bytes > 0");
    return {
      detail:
        `${r.steps} steps, loss ${r.loss_first.toFixed(4)} -> ${r.loss_last.toFixed(4)}, ` +
        `eval acc ${r.eval_accuracy.toFixed(3)}, files [${r.exported_files.join(", ")}], ` +
        `model.safetensors ${r.safetensors_bytes} bytes; page total ${wall.toFixed(1)} s`,
    };
  } finally {
    await context.close().catch(() => {});
  }
}

async function testNoWebGpu(base) {
  const browser = await launch(BASE_ARGS); // no --enable-unsafe-webgpu
  try {
    const page = await browser.newPage();
    forwardConsole(page, "no-webgpu");
    await page.goto(`${base}/?autorun=1&steps=1`, { timeout: 60_000 });
    const state = await pollPage(
      page,
      () => ({
        done: Boolean(window.dpoResult || window.dpoError),
        error: window.dpoError ?? null,
        notice: document.getElementById("gpu-status")?.textContent ?? "",
        visible: (() => {
          const el = document.getElementById("gpu-status");
          return Boolean(el && el.offsetParent !== null && el.classList.contains("error"));
        })(),
        disabled: document.getElementById("start")?.disabled ?? false,
      }),
      { timeoutMs: 60_000, every: 250 },
    );
    assert(state.error, "window.dpoError is set (training must not start without WebGPU)");
    assert(/WebGPU is not available/.test(state.error), `clear message (got: ${state.error})`);
    assert(state.visible && /WebGPU is not available/.test(state.notice), "the message is shown on the page");
    assert(state.disabled, "the start button is disabled");
    const apiError = await withTimeout(
      page.evaluate(async () => {
        const { DpoTrainer } = await import("./web/dpo-trainer.js");
        try {
          await DpoTrainer.create({});
          return "resolved";
        } catch (e) {
          return `${e.name}: ${e.message}`;
        }
      }),
      30_000,
      "DpoTrainer.create without WebGPU",
    );
    assert(/^WebGpuUnavailableError: WebGPU is not available/.test(apiError),
      `DpoTrainer.create rejects with WebGpuUnavailableError (got: ${apiError})`);
    return { detail: `page says: "${state.notice.slice(0, 120)}…"; API: ${apiError.slice(0, 80)}…` };
  } finally {
    await closeBrowser(browser);
  }
}

// ---------------------------------------------------------------------------------------------

async function main() {
  for (const f of ["index.html", "dpo-wgpu.js", "dpo-wgpu_bg.wasm", "web/dpo-trainer.js", "web/worker.js",
                   "examples/embed.html"]) {
    if (!fs.existsSync(path.join(DIST, f))) {
      console.log(`FAIL: ${path.join(DIST, f)} is missing; build first: scripts/build-web.sh`);
      console.log("0 passed, 3 failed");
      process.exit(1);
    }
  }
  if (!fs.existsSync(CHROMIUM)) {
    console.log(`FAIL: no browser at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);
    console.log("0 passed, 3 failed");
    process.exit(1);
  }
  const server = await startServer(DIST);
  const base = `http://127.0.0.1:${server.address().port}`;
  log(`serving ${DIST} at ${base}; Chromium: ${CHROMIUM}`);

  const results = [];
  const run = async (name, fn) => {
    const started = Date.now();
    log(`RUN  ${name}`);
    try {
      const { detail } = await fn();
      results.push(true);
      log(`PASS ${name} (${((Date.now() - started) / 1000).toFixed(1)} s): ${detail}`);
    } catch (e) {
      results.push(false);
      log(`FAIL ${name} (${((Date.now() - started) / 1000).toFixed(1)} s): ${e.message}`);
    }
  };

  let browser = null;
  try {
    try {
      browser = await launch([...BASE_ARGS, ...WEBGPU_ARGS]);
      log(`Chromium ${browser.version()}`);
    } catch (e) {
      log(`FAIL could not launch Chromium: ${e.message}`);
    }
    const needBrowser = (fn) => () => (browser ? fn() : Promise.reject(new Error("no browser")));
    await run(`demo page trains ${STEPS} steps (/?autorun=1&steps=${STEPS})`,
      needBrowser(() => testDemoPage(browser, base)));
    await run(`embed example trains ${EMBED_STEPS} steps, evaluates, exports (/examples/embed.html)`,
      needBrowser(() => testEmbed(browser, base)));
    await closeBrowser(browser);
    browser = null;
    await run("clear message without WebGPU", () => testNoWebGpu(base));
  } finally {
    await closeBrowser(browser);
    server.closeAllConnections?.();
    server.close();
  }

  const passed = results.filter(Boolean).length;
  const failed = results.length - passed;
  log(`total wall time ${elapsed()} s`);
  console.log(`${passed} passed, ${failed} failed`);
  clearTimeout(watchdog);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((e) => {
  console.log(`FAIL: ${e.stack ?? e}`);
  console.log("0 passed, 3 failed");
  process.exit(1);
});
