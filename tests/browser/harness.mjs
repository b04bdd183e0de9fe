// What the headless-Chromium tests share: a static file server, timeouts, polling a page.

import fs from "node:fs";
import http from "node:http";
import path from "node:path";

export const MIME = {
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
  ".md": "text/plain; charset=utf-8",
  ".map": "application/json; charset=utf-8",
};

export const isNum = (x) => typeof x === "number" && Number.isFinite(x);

export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

export const withTimeout = (promise, ms, what) =>
  Promise.race([
    promise,
    new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`${what}: timed out after ${ms / 1000} s`)), ms).unref(),
    ),
  ]);

/**
 * Serves `dir` on 127.0.0.1 (a free port). `generated`: { "/path": [contentType, body or () =>
 * body] } answered first; `mounts`: { "/prefix/": otherDir }; `onServe(pathname)` sees every file
 * served. A folder answers with its index.html.
 */
export function startServer(dir, { generated = {}, mounts = {}, trickle = {}, onServe, verbose = false } = {}) {
  const server = http.createServer((req, res) => {
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, "http://x").pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    const slow = trickle[pathname];
    if (slow && req.method !== "HEAD") {
      // A download that never finishes on its own: 16 KiB every 50 ms of a `slow.size`-byte body.
      // `slow.closed(sent)` is called when the client hangs up before the end.
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": slow.size, "cache-control": "no-store" });
      let sent = 0;
      const timer = setInterval(() => {
        const n = Math.min(16384, slow.size - sent);
        res.write(Buffer.alloc(n));
        sent += n;
        if (sent >= slow.size) {
          clearInterval(timer);
          res.end();
        }
      }, 50);
      res.on("close", () => {
        clearInterval(timer);
        if (sent < slow.size) slow.closed?.(sent);
      });
      return;
    }
    const made = generated[pathname];
    if (made) {
      const [type, body] = made;
      const bytes = Buffer.from(typeof body === "function" ? body() : body);
      res.writeHead(200, { "content-type": type, "content-length": bytes.length, "cache-control": "no-store" });
      res.end(req.method === "HEAD" ? undefined : bytes);
      return;
    }
    let base = dir;
    for (const [prefix, mounted] of Object.entries(mounts)) {
      if (pathname.startsWith(prefix)) {
        base = mounted;
        pathname = pathname.slice(prefix.length - 1);
        break;
      }
    }
    let file = path.join(base, pathname);
    if (!file.startsWith(base + path.sep) && file !== base) {
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
        if (verbose) console.log(`  server: 404 ${req.method} ${req.url}`);
        res.writeHead(404, { "content-type": "text/plain" }).end("not found");
        return;
      }
      onServe?.(path.relative(dir, file).split(path.sep).join("/"));
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

/**
 * Polls `probe` in the page until `done(state)` (default: state.done), logging `progress(state)`
 * when it changes; throws after `timeoutMs`.
 */
export async function pollPage(page, probe, { timeoutMs, every = 2000, progress, done, log = console.log }) {
  const deadline = Date.now() + timeoutMs;
  let lastProgress = "";
  for (;;) {
    const state = await withTimeout(page.evaluate(probe), 30_000, "page.evaluate");
    if (done ? done(state) : state.done) return state;
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
