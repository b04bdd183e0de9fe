#!/usr/bin/env node
// Headless-Chromium tests of the browser build (trunk's dist/), WebGPU on SwiftShader.
//
//   scripts/build-web.sh && node tests/browser/run.mjs
//
// Tests:
//   1. /?autorun=1&steps=S&generate=1   the demo page trains S steps in its worker (loss must go
//                            down), then generates from the demo prompt; with the whole schedule
//                            (60) its before/after table must show lines in the mood asked for
//   2. /examples/embed.html  the embeddable module: train, evaluate, generate (streamed), export
//   3. modelUrl              DpoTrainer.create({ modelUrl: "/fixtures/llama/policy/" }) downloads
//                            the tiny random Llama of tests/fixtures (served under /fixtures/);
//                            greedy generation before training equals transformers' token ids
//                            (tests/fixtures/llama/model_expected.json), 2 DPO steps on
//                            tests/fixtures/data.jsonl, then a LoRA run exports a PEFT adapter;
//                            the same weights split into 2 shards (model.safetensors.index.json)
//                            give the same greedy ids and loss
//   4. GGUF by URL           the tiny sentencepiece-Llama and Qwen2 GGUF files of tests/fixtures:
//                            prompt ids and greedy ids equal transformers', a DPO step runs
//   5. modelUrl errors       a folder without config.json, an index naming a missing shard, and
//                            one naming a shard outside the folder are rejected with clear
//                            messages
//   6. model sources agree   web/model-source.js's file list and hf: URLs equal the Rust side's
//                            (the wasm exports modelLayout() and hubUrl())
//   7. no WebGPU             a browser without --enable-unsafe-webgpu shows the clear message,
//                            and DpoTrainer.create() rejects with WebGpuUnavailableError
//   8. the page (page.mjs)   demo with LoRA: train, pause, charts, adapter download with PEFT's
//                            names; reload, resume from OPFS, same losses as an uninterrupted run
//   9. teach it yourself     sample pairs, pick, train on the choices (chosen reward rises),
//                            compare reference and tuned, choices as JSONL (phone-sized window)
//  10. model from disk       GGUF and a sharded folder through the file input; errors shown in
//                            the model and data cards
//  11. npm package (package.mjs)  packed tarball installed, its example page trains; tsc on the
//                            .d.ts with a file using the whole API
// Screenshots of each screen go to DPO_SCREENSHOTS (default: screenshots/ at the repo root).
// Prints "<n> passed, <m> failed" last; exits non-zero on any failure. Everything is bounded
// by timeouts.
//
// Environment (all optional):
//   DPO_DIST            folder to serve (default: dist/ at the repo root)
//   CHROMIUM            browser binary (default: /usr/bin/chromium)
//   DPO_TEST_STEPS      steps for test 1 (default 60, the demo's whole schedule: then its
//                       before/after lines must be sentences in the mood each prompt asks for)
//   DPO_EMBED_STEPS     steps for test 2 (default 8)
//   DPO_TEST_TIMEOUT_S  limit for test 1 in seconds (default 900); the others get the same
//   DPO_TOTAL_TIMEOUT_S hard limit for the whole run (default 3000)
//   DPO_VERBOSE=1       also forward the browser's console.log/info lines
//   DPO_ONLY            comma-separated test numbers to run (e.g. "3,4"); the others are skipped
//   DPO_SCREENSHOTS     folder for the page tests' screenshots

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { assert, isNum, pollPage as poll, startServer, withTimeout } from "./harness.mjs";
import { testPackage } from "./package.mjs";
import { testPageDisk, testPageTeach, testPageTrainResume } from "./page.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const DIST = path.resolve(process.env.DPO_DIST ?? path.join(root, "dist"));
const FIXTURES = path.join(root, "tests", "fixtures");
const TEST_COUNT = 11;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const STEPS = Number(process.env.DPO_TEST_STEPS ?? 60);
const EMBED_STEPS = Number(process.env.DPO_EMBED_STEPS ?? 8);
const TEST_TIMEOUT_S = Number(process.env.DPO_TEST_TIMEOUT_S ?? 900);
const TOTAL_TIMEOUT_S = Number(process.env.DPO_TOTAL_TIMEOUT_S ?? 3000);
const VERBOSE = process.env.DPO_VERBOSE === "1";
const ONLY = process.env.DPO_ONLY ? new Set(process.env.DPO_ONLY.split(",").map((x) => Number(x.trim()))) : null;

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
const pollPage = (page, probe, options) => poll(page, probe, { log, ...options });

// Hard stop: whatever hangs, the run ends.
const watchdog = setTimeout(() => {
  console.log(`FAIL: the whole run exceeded ${TOTAL_TIMEOUT_S} s; aborting`);
  console.log(`0 passed, ${TEST_COUNT} failed`);
  process.exit(2);
}, TOTAL_TIMEOUT_S * 1000);

// ---------------------------------------------------------------------------------------------
// Static file server: dist/ at /, tests/fixtures at /fixtures/, and a few generated files under
// /__test__/ (a blank page to run module code in, a sharded checkpoint, and a broken one).

/**
 * Splits a safetensors file into `count` shards (tensors dealt out in name order) as
 * `save_pretrained` would shard it: { files: { name: Buffer }, index: model.safetensors.index.json }.
 */
function shardSafetensors(file, count) {
  const bytes = fs.readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString("utf8"));
  const dataStart = 8 + headerLen;
  const names = Object.keys(header).filter((k) => k !== "__metadata__").sort();
  const files = {};
  const weightMap = {};
  let totalSize = 0;
  for (let s = 0; s < count; s++) {
    const shardName = `model-0000${s + 1}-of-0000${count}.safetensors`;
    const shardHeader = { __metadata__: { format: "pt" } };
    const chunks = [];
    let offset = 0;
    names.filter((_, i) => i % count === s).forEach((name) => {
      const { dtype, shape, data_offsets: [begin, end] } = header[name];
      chunks.push(bytes.subarray(dataStart + begin, dataStart + end));
      shardHeader[name] = { dtype, shape, data_offsets: [offset, offset + (end - begin)] };
      offset += end - begin;
      weightMap[name] = shardName;
    });
    totalSize += offset;
    let json = JSON.stringify(shardHeader);
    json += " ".repeat((8 - (json.length % 8)) % 8);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    files[shardName] = Buffer.concat([len, Buffer.from(json, "utf8"), ...chunks]);
  }
  return { files, index: { metadata: { total_size: totalSize }, weight_map: weightMap } };
}

const SHARDED = shardSafetensors(path.join(FIXTURES, "llama/policy/model.safetensors"), 2);

const GENERATED = {
  "/__test__/blank.html": ["text/html; charset=utf-8", "<!doctype html><title>test</title>"],
  // the tiny Llama of fixtures/llama/policy, its weights in two shards
  ...Object.fromEntries(["config.json", "tokenizer.json", "tokenizer_config.json"].map((f) => [
    `/__test__/sharded/${f}`, ["application/json", () => fs.readFileSync(path.join(FIXTURES, "llama/policy", f))],
  ])),
  "/__test__/sharded/model.safetensors.index.json": ["application/json", JSON.stringify(SHARDED.index)],
  ...Object.fromEntries(Object.entries(SHARDED.files).map(([name, bytes]) => [
    `/__test__/sharded/${name}`, ["application/octet-stream", bytes],
  ])),
  // an index naming a shard that is not there
  "/__test__/missing-shard/config.json": ["application/json", () => fs.readFileSync(path.join(FIXTURES, "llama/policy/config.json"))],
  "/__test__/missing-shard/tokenizer.json": ["application/json", () => fs.readFileSync(path.join(FIXTURES, "llama/policy/tokenizer.json"))],
  "/__test__/missing-shard/model.safetensors.index.json": ["application/json", JSON.stringify({
    metadata: { total_size: 8 },
    weight_map: { "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors" },
  })],
  // a model whose weights download slowly (served by TRICKLE), for cancelling a download
  ...Object.fromEntries(["config.json", "tokenizer.json", "tokenizer_config.json"].map((f) => [
    `/__test__/slow/${f}`, ["application/json", () => fs.readFileSync(path.join(FIXTURES, "llama/policy", f))],
  ])),
  // a hostile index naming a shard outside the folder
  "/__test__/hostile-shard/config.json": ["application/json", () => fs.readFileSync(path.join(FIXTURES, "llama/policy/config.json"))],
  "/__test__/hostile-shard/tokenizer.json": ["application/json", () => fs.readFileSync(path.join(FIXTURES, "llama/policy/tokenizer.json"))],
  "/__test__/hostile-shard/model.safetensors.index.json": ["application/json", JSON.stringify({
    weight_map: { "a.weight": "../sharded/model-00001-of-00002.safetensors" },
  })],
};

// 256 MiB at 320 KiB/s: no test waits for it; `hungUp` records a client closing it early.
const SLOW_DOWNLOAD = { hungUp: [] };
const TRICKLE = {
  "/__test__/slow/model.safetensors": { size: 256 << 20, closed: (sent) => SLOW_DOWNLOAD.hungUp.push(sent) },
};

// ---------------------------------------------------------------------------------------------
// Helpers.

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

// ---------------------------------------------------------------------------------------------
// Tests.

async function testDemoPage(browser, base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  forwardConsole(page, "demo");
  try {
    const started = Date.now();
    await page.goto(`${base}/?autorun=1&steps=${STEPS}&generate=1`, { timeout: 60_000 });
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
    assert(r.steps === STEPS, `steps == ${STEPS} (got ${r.steps})`);
    for (const k of ["loss_first", "loss_last", "accuracy_last", "train_accuracy_last"]) {
      assert(isNum(r[k]), `${k} is a finite number (got ${r[k]})`);
    }
    assert(r.loss_last < r.loss_first, `loss_last (${r.loss_last}) < loss_first (${r.loss_first})`);
    assert(r.accuracy_last >= 0 && r.accuracy_last <= 1, "accuracy_last in [0, 1]");
    assert(typeof r.generated_text === "string", `generated_text is a string (got ${r.generated_text})`);
    assert(Number.isInteger(r.generated_tokens) && r.generated_tokens >= 1 && r.generated_tokens <= 8,
      `1 <= generated_tokens <= 8 (got ${r.generated_tokens})`);
    assert(isNum(r.tokens_per_second) && r.tokens_per_second > 0,
      `tokens_per_second is a finite positive number (got ${r.tokens_per_second})`);
    // The whole demo schedule ran: its lines must read as sentences in the mood asked for.
    const moodWords = {
      happy: ["bright", "lovely", "warm", "cheerful", "wonderful", "calm", "sweet", "great", "kind", "fun", "gentle", "joyful"],
      sad: ["dull", "awful", "cold", "gloomy", "terrible", "tense", "bitter", "poor", "harsh", "boring", "grim", "dreary"],
    };
    if (STEPS === 60) {
      assert(Array.isArray(r.before_after) && r.before_after.length === 4, `before/after lines: ${JSON.stringify(r.before_after)}`);
      for (const { prompt, after } of r.before_after) {
        const [, mood, subject] = prompt.match(/write a (happy|sad) line about the (\w+) :/);
        const other = mood === "happy" ? "sad" : "happy";
        const words = after.split(/\s+/);
        assert(words.includes(subject) && words.some((w) => moodWords[mood].includes(w)) &&
          !words.some((w) => moodWords[other].includes(w)), `"${prompt}" -> "${after}" is a ${mood} line about the ${subject}`);
      }
    }
    const shown = await page.textContent("#out-tuned");
    assert(shown.endsWith(r.generated_text), `#out-tuned shows the generated text (got ${JSON.stringify(shown)})`);
    return {
      detail:
        `${r.steps} steps, loss ${r.loss_first.toFixed(4)} -> ${r.loss_last.toFixed(4)}, ` +
        `held-out acc ${r.eval_accuracy_before?.toFixed(3)} -> ${r.accuracy_last.toFixed(3)}, ` +
        `train acc (last batch) ${r.train_accuracy_last.toFixed(3)}; ` +
        `${r.seconds_per_step?.toFixed(2)} s/step (Rust-timed; first step ${r.seconds_first_step?.toFixed(2)} s, ` +
        `wall ${r.wall_seconds_per_step?.toFixed(2)} s/step); generated ${r.generated_tokens} tokens ` +
        `${JSON.stringify(r.generated_text)} at ${r.tokens_per_second.toFixed(2)} tokens/s (greedy); ` +
        `page total ${wall.toFixed(1)} s on ${r.device}; before -> after: ` +
        (r.before_after ?? []).map((x) => `"${x.before}" -> "${x.after}"`).join(", "),
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
    assert(r.streamed_deltas >= 1, `at least one onToken call (got ${r.streamed_deltas})`);
    assert(r.streamed_deltas === r.generated_tokens,
      `one onToken call per new token (${r.streamed_deltas} calls, ${r.generated_tokens} tokens)`);
    assert(typeof r.generated_text === "string" && r.generated_text === r.streamed_text,
      `generated text ${JSON.stringify(r.generated_text)} == streamed deltas joined ${JSON.stringify(r.streamed_text)}`);
    return {
      detail:
        `${r.steps} steps, loss ${r.loss_first.toFixed(4)} -> ${r.loss_last.toFixed(4)}, ` +
        `eval acc ${r.eval_accuracy.toFixed(3)}, files [${r.exported_files.join(", ")}], ` +
        `model.safetensors ${r.safetensors_bytes} bytes; generated ${JSON.stringify(r.generated_text)} ` +
        `in ${r.streamed_deltas} deltas; page total ${wall.toFixed(1)} s`,
    };
  } finally {
    await context.close().catch(() => {});
  }
}

// Starts `job` (a function source run in a blank page of the server) and polls window.__job.
async function runInPage(browser, base, tag, job, arg, timeoutMs) {
  const context = await browser.newContext();
  const page = await context.newPage();
  forwardConsole(page, tag);
  try {
    await page.goto(`${base}/__test__/blank.html`, { timeout: 60_000 });
    await page.evaluate(
      ([source, arg]) => {
        window.__job = { done: false, progress: "starting" };
        const setProgress = (p) => { window.__job.progress = p; };
        // eslint-disable-next-line no-new-func
        const fn = new Function(`return (${source});`)();
        fn(arg, setProgress).then(
          (result) => { window.__job = { done: true, result }; },
          (err) => { window.__job = { done: true, error: `${err?.name}: ${err?.message ?? err}` }; },
        );
      },
      [job.toString(), arg],
    );
    const state = await pollPage(page, () => window.__job, {
      timeoutMs,
      progress: (s) => s.progress,
    });
    if (state.error) throw new Error(`in the page: ${state.error}`);
    return state.result;
  } finally {
    await context.close().catch(() => {});
  }
}

async function testModelUrl(browser, base) {
  const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, "llama/model_expected.json"), "utf8"));
  const { prompt_ids: promptIds, new_ids: newIds } = expected.greedy[0];
  // The fixture ran all 12 steps without an EOS stop; the generator stops at EOS (id 0).
  const eos = newIds.indexOf(0);
  const want = eos >= 0 ? newIds.slice(0, eos + 1) : newIds;
  const started = Date.now();
  const r = await runInPage(browser, base, "modelUrl", async (_arg, progress) => {
    const { DpoTrainer } = await import("/web/dpo-trainer.js");
    const text = await (await fetch("/fixtures/data.jsonl")).text();
    const rows = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
    const downloads = [];
    progress("create (downloading /fixtures/llama/policy/)");
    const trainer = await DpoTrainer.create({
      modelUrl: "/fixtures/llama/policy/",
      onProgress: (p) => downloads.push(p),
      trainData: rows,
      maxSteps: 2,
      batchSize: 4,
      lr: 1e-3,
    });
    const info = await trainer.info();
    progress("generate before training");
    const deltas = [];
    const g = await trainer.generate("Once upon a time", {
      maxNewTokens: 12,
      onToken: (delta, id) => deltas.push([delta, id]),
    });
    progress("train 2 steps");
    const reports = await trainer.train({ steps: 2 });
    const metrics = await trainer.evaluate();
    trainer.terminate();

    progress("LoRA: create, 1 step, export");
    const lora = await DpoTrainer.create({
      modelUrl: "/fixtures/llama/policy/",
      trainData: rows,
      maxSteps: 1,
      batchSize: 4,
      lr: 1e-3,
      loraRank: 2,
    });
    const loraInfo = await lora.info();
    const loraReports = await lora.train();
    const loraGenerated = await lora.generate("Once upon a time", { maxNewTokens: 4 });
    const files = await lora.exportModel();
    lora.terminate();

    progress("ORPO (reference-free): evaluate as TRL's ORPOTrainer");
    const orpo = await DpoTrainer.create({
      modelUrl: "/fixtures/llama/policy/",
      trainData: rows,
      evalData: rows,
      loss: ["orpo"],
      maxLength: 64,
      evalBatchSize: 3,
      maxSteps: 1,
    });
    const orpoMetrics = await orpo.evaluate();
    orpo.terminate();
    const orpoExpected = (await (await fetch("/fixtures/losses/reference_free.json")).json()).eval.llama.orpo;

    progress("sharded: create from /__test__/sharded/ (2 shards), generate");
    const shardDownloads = [];
    const sharded = await DpoTrainer.create({
      modelUrl: "/__test__/sharded/",
      onProgress: (p) => shardDownloads.push(p.file),
      trainData: rows,
      maxSteps: 1,
      batchSize: 4,
    });
    const shardedGenerated = await sharded.generate("Once upon a time", { maxNewTokens: 12 });
    const shardedLosses = (await sharded.train()).map((r) => r.loss);
    sharded.terminate();
    return {
      shardedGenerated,
      shardedLosses,
      shardFiles: [...new Set(shardDownloads)].filter((f) => f.endsWith(".safetensors")).sort(),
      info,
      downloads,
      generated: { ...g, deltas },
      losses: reports.map((r) => r.loss),
      metrics,
      loraInfo,
      orpoMetrics,
      orpoExpected,
      loraLosses: loraReports.map((r) => r.loss),
      loraGenerated,
      loraFiles: Object.fromEntries(Object.entries(files).map(([k, v]) => [k, v.length])),
      adapterConfig: files["adapter_config.json"] ? JSON.parse(new TextDecoder().decode(files["adapter_config.json"])) : null,
    };
  }, null, TEST_TIMEOUT_S * 1000);
  const wall = (Date.now() - started) / 1000;
  const g = r.generated;
  log(`  info: ${JSON.stringify({ ...r.info, options: undefined })}`);
  log(`  generate: ${JSON.stringify({ ...g, deltas: g.deltas.length })}`);
  assert(r.info.family === "llama" && r.info.demo === false && r.info.task === "dpo",
    `info: llama, not the demo, dpo (got ${r.info.family}, ${r.info.demo}, ${r.info.task})`);
  assert(r.info.trainExamples > 0 && r.info.totalSteps === 2, `train examples > 0 and 2 steps (got ${r.info.trainExamples}, ${r.info.totalSteps})`);
  const st = r.downloads.filter((p) => p.file === "model.safetensors");
  const size = fs.statSync(path.join(FIXTURES, "llama/policy/model.safetensors")).size;
  assert(st.length >= 1 && st.at(-1).loaded === size && st.at(-1).total === size,
    `onProgress reported model.safetensors up to ${size} bytes (got ${JSON.stringify(st.at(-1))})`);
  for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
    assert(r.downloads.some((p) => p.file === f), `onProgress reported ${f}`);
  }
  assert(g.promptTokens === promptIds.length, `prompt tokens ${g.promptTokens} == ${promptIds.length}`);
  assert(JSON.stringify(g.newTokens) === JSON.stringify(want),
    `greedy ids ${JSON.stringify(g.newTokens)} == transformers' ${JSON.stringify(want)}`);
  assert(JSON.stringify(g.deltas.map((d) => d[1])) === JSON.stringify(g.newTokens), "onToken ids == newTokens");
  assert(g.deltas.map((d) => d[0]).join("") === g.text, "deltas joined == text");
  assert(isNum(g.tokensPerSecond) && g.tokensPerSecond > 0, `finite tokensPerSecond (got ${g.tokensPerSecond})`);
  assert(r.losses.length === 2 && r.losses.every(isNum), `2 finite losses (got ${r.losses})`);
  assert(r.metrics === null, `evaluate() is null without evalData (got ${JSON.stringify(r.metrics)})`);
  assert(r.loraInfo.lora?.rank === 2, `info().lora.rank == 2 (got ${JSON.stringify(r.loraInfo.lora)})`);
  assert(r.loraLosses.length === 1 && isNum(r.loraLosses[0]), `1 finite LoRA loss (got ${r.loraLosses})`);
  const lg = r.loraGenerated;
  assert(lg.newTokens.length >= 1 && lg.newTokens.length <= 4, `LoRA policy generates 1..4 tokens (got ${lg.newTokens})`);
  for (const f of ["adapter_config.json", "adapter_model.safetensors"]) {
    assert(r.loraFiles[f] > 0, `LoRA export has ${f} (got ${JSON.stringify(r.loraFiles)})`);
  }
  assert(!("model.safetensors" in r.loraFiles), "LoRA export has no model.safetensors (not merged)");
  assert(r.adapterConfig?.r === 2, `adapter_config.json r == 2 (got ${r.adapterConfig?.r})`);
  for (const key of ["loss", "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/margins"]) {
    const ours = r.orpoMetrics?.[key];
    const trl = r.orpoExpected[`eval_${key}`];
    assert(isNum(ours) && Math.abs(ours - trl) <= 1e-4 * Math.abs(trl),
      `ORPO eval ${key} ${ours} == TRL's ${trl} (1e-4 relative)`);
  }
  const shardNames = Object.keys(SHARDED.files).sort();
  assert(JSON.stringify(r.shardFiles) === JSON.stringify(shardNames),
    `sharded: downloaded ${JSON.stringify(shardNames)} (got ${JSON.stringify(r.shardFiles)})`);
  assert(JSON.stringify(r.shardedGenerated.newTokens) === JSON.stringify(want),
    `sharded: greedy ids ${JSON.stringify(r.shardedGenerated.newTokens)} == transformers' ${JSON.stringify(want)}`);
  assert(r.shardedLosses.length === 1 && isNum(r.shardedLosses[0]) && Math.abs(r.shardedLosses[0] - r.losses[0]) < 1e-5,
    `sharded: first DPO loss equals the single-file model's (got ${r.shardedLosses}, ${r.losses[0]})`);
  return {
    detail:
      `greedy ids match transformers (${g.newTokens.length} tokens, ${g.tokensPerSecond.toFixed(2)} tokens/s, ` +
      `${g.seconds.toFixed(2)} s); DPO losses ${r.losses.map((l) => l.toFixed(4)).join(", ")}; ` +
      `LoRA loss ${r.loraLosses[0].toFixed(4)}, generates ${lg.newTokens.length} tokens at ` +
      `${lg.tokensPerSecond.toFixed(2)} tokens/s, files [${Object.keys(r.loraFiles).sort().join(", ")}]; ` +
      `2-shard checkpoint: same greedy ids and loss; ORPO eval loss ${r.orpoMetrics.loss.toFixed(4)} == TRL's; ` +
      `total ${wall.toFixed(1)} s`,
  };
}

async function testGgufUrls(browser, base) {
  // The tiny GGUF files of tests/fixtures: a sentencepiece-vocabulary Llama (TinyLlama-style) and a
  // Qwen2 (byte-level BPE with the qwen2 split): GGUF parsing, dequantization, both tokenizers
  // and greedy decoding in wasm, against transformers' ids.
  const cases = [
    ["spm_gguf", "tiny-llama-spm.gguf"],
    ["qwen2_gguf", "tiny-qwen2.gguf"],
  ].map(([dir, file]) => {
    const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, dir, "expected.json"), "utf8"));
    const { text, ids, new_ids: newIds } = expected.generation[0];
    return { url: `/fixtures/${dir}/${file}`, text, ids, newIds };
  });
  const r = await runInPage(browser, base, "gguf", async (cases) => {
    const { DpoTrainer } = await import("/web/dpo-trainer.js");
    const out = [];
    for (const c of cases) {
      const trainer = await DpoTrainer.create({
        modelUrl: c.url,
        trainData: [{ prompt: "The movie was", chosen: " great.", rejected: " awful." }],
        maxSteps: 1,
      });
      const info = await trainer.info();
      const generated = await trainer.generate(c.text, { maxNewTokens: c.newIds.length });
      const losses = (await trainer.train()).map((x) => x.loss);
      trainer.terminate();
      out.push({ family: info.family, generated, losses });
    }
    return out;
  }, cases, TEST_TIMEOUT_S * 1000);
  const details = [];
  r.forEach((got, i) => {
    const c = cases[i];
    const g = got.generated;
    assert(got.family === (i === 0 ? "llama" : "qwen2"), `${c.url}: family (got ${got.family})`);
    assert(g.promptTokens === c.ids.length, `${c.url}: ${g.promptTokens} prompt tokens == transformers' ${c.ids.length}`);
    assert(JSON.stringify(g.newTokens) === JSON.stringify(c.newIds),
      `${c.url}: greedy ids ${JSON.stringify(g.newTokens)} == transformers' ${JSON.stringify(c.newIds)}`);
    assert(got.losses.length === 1 && isNum(got.losses[0]), `${c.url}: one finite DPO loss (got ${got.losses})`);
    details.push(`${c.url.split("/").pop()}: ${g.newTokens.length} ids match, ${g.tokensPerSecond.toFixed(2)} tokens/s`);
  });
  return { detail: details.join("; ") };
}

async function testModelUrlErrors(browser, base) {
  const r = await runInPage(browser, base, "modelUrl-errors", async () => {
    const { DpoTrainer } = await import("/web/dpo-trainer.js");
    const attempt = async (modelUrl) => {
      try {
        const t = await DpoTrainer.create({ modelUrl, trainData: [{ prompt: "a", chosen: "b", rejected: "c" }] });
        t.terminate();
        return "resolved";
      } catch (e) {
        return `${e.name}: ${e.message}`;
      }
    };
    return {
      missing: await attempt("/fixtures/llama/"),
      missingShard: await attempt("/__test__/missing-shard"),
      hostileShard: await attempt("/__test__/hostile-shard"),
      badHf: await attempt("hf:not a repo"),
    };
  }, null, 180_000);
  log(`  errors: ${JSON.stringify(r)}`);
  assert(/config\.json not found at .*\/fixtures\/llama\/config\.json \(404\)/.test(r.missing),
    `missing folder: names config.json and the URL (got ${r.missing})`);
  assert(/model-0000[12]-of-00002\.safetensors \(named in model\.safetensors\.index\.json\) not found at .*\(404\)/.test(r.missingShard),
    `missing shard: names the file and the URL (got ${r.missingShard})`);
  assert(/^TypeError: .*hf:OWNER\/NAME/.test(r.badHf), `malformed hf: URL (got ${r.badHf})`);
  assert(/not a plain file name inside the model folder/.test(r.hostileShard),
    `a shard named "../x" is refused (got ${r.hostileShard})`);
  return { detail: `${r.missing.slice(0, 90)}…; ${r.missingShard.slice(0, 90)}…` };
}

async function testModelSourceAgrees(browser, base) {
  const r = await runInPage(browser, base, "model-source", async () => {
    const wasm = await import("/dpo-wgpu.js");
    await wasm.default({ module_or_path: "/dpo-wgpu_bg.wasm" });
    const source = await import("/web/model-source.js");
    const attempt = (f) => {
      try {
        return f();
      } catch {
        return "error";
      }
    };
    const specs = [
      "hf:a/b", "HF:a/b", " hf:a/b/m.gguf ", "hf:a/b@%zz", "hf:HuggingFaceTB/SmolLM2-135M-Instruct@v1.0", "hf:a/b/sub/m.Q4_0.gguf",
      "hf:a/b/x.GGUF@refs/pr/1", "hf:a/b/folder@v2", "hf:a/b@refs%2Fpr%2F1", "hf:a/b@a@b",
      "hf:onlyowner", "hf:a/b@", "hf:a/../b", "hf:not a repo", "hf:a/b/c d", "hf:a/b/x.gguf/",
    ];
    return {
      rustLayout: wasm.modelLayout(),
      jsLayout: source.MODEL_LAYOUT,
      hub: specs.map((spec) => ({
        spec,
        rust: attempt(() => wasm.hubUrl(spec)),
        js: attempt(() => source.resolveModelUrl(spec, location.href)),
      })),
    };
  }, null, 120_000);
  assert(JSON.stringify(r.rustLayout) === JSON.stringify(r.jsLayout),
    `file lists agree (Rust ${JSON.stringify(r.rustLayout)}, JS ${JSON.stringify(r.jsLayout)})`);
  const differ = r.hub.filter((h) => h.rust !== h.js);
  assert(differ.length === 0, `hf: references resolve alike: ${JSON.stringify(differ)}`);
  const ok = r.hub.filter((h) => h.rust !== "error").length;
  return {
    detail: `${r.rustLayout.required.length + r.rustLayout.optional.length} text files + weights; ` +
      `${r.hub.length} hf: references (${ok} valid, ${r.hub.length - ok} refused by both) resolve alike`,
  };
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
        disabled: document.getElementById("train")?.disabled ?? false,
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
  for (const f of ["index.html", "dpo-wgpu.js", "dpo-wgpu_bg.wasm", "web/dpo-trainer.js", "web/worker.js", "web/model-source.js",
                   "examples/embed.html"]) {
    if (!fs.existsSync(path.join(DIST, f))) {
      console.log(`FAIL: ${path.join(DIST, f)} is missing; build first: scripts/build-web.sh`);
      console.log(`0 passed, ${TEST_COUNT} failed`);
      process.exit(1);
    }
  }
  if (!fs.existsSync(CHROMIUM)) {
    console.log(`FAIL: no browser at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);
    console.log(`0 passed, ${TEST_COUNT} failed`);
    process.exit(1);
  }
  const server = await startServer(DIST, { generated: GENERATED, trickle: TRICKLE, mounts: { "/fixtures/": FIXTURES }, verbose: VERBOSE });
  const base = `http://127.0.0.1:${server.address().port}`;
  log(`serving ${DIST} at ${base}; Chromium: ${CHROMIUM}`);

  const results = [];
  let number = 0;
  const run = async (name, fn) => {
    number += 1;
    if (ONLY && !ONLY.has(number)) {
      log(`SKIP ${number}. ${name}`);
      return;
    }
    name = `${number}. ${name}`;
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
    await run(`demo page trains ${STEPS} steps and generates (/?autorun=1&steps=${STEPS}&generate=1)`,
      needBrowser(() => testDemoPage(browser, base)));
    await run(`embed example trains ${EMBED_STEPS} steps, evaluates, generates, exports (/examples/embed.html)`,
      needBrowser(() => testEmbed(browser, base)));
    await run("modelUrl: tiny Llama from /fixtures/llama/policy/, greedy ids == transformers, DPO, LoRA export, 2 shards",
      needBrowser(() => testModelUrl(browser, base)));
    await run("GGUF by URL: sentencepiece Llama and Qwen2, greedy ids == transformers, a DPO step",
      needBrowser(() => testGgufUrls(browser, base)));
    await run("modelUrl errors: missing config.json, missing shard, hostile shard, malformed hf:",
      needBrowser(() => testModelUrlErrors(browser, base)));
    await run("model-source.js agrees with the Rust side: file list and hf: URLs",
      needBrowser(() => testModelSourceAgrees(browser, base)));
    const ctx = {
      log, pollPage, forwardConsole, timeoutMs: TEST_TIMEOUT_S * 1000,
      screenshots: path.resolve(process.env.DPO_SCREENSHOTS ?? path.join(root, "screenshots")),
    };
    await run("the page: demo with LoRA, train, pause, charts, PEFT adapter download, reload, resume == uninterrupted",
      needBrowser(() => testPageTrainResume(ctx, browser, base)));
    await run("teach it yourself: sample, pick, train on the choices, compare (phone-sized)",
      needBrowser(() => testPageTeach(ctx, browser, base)));
    await run("model from disk: GGUF and a sharded folder through the file input; errors in their cards; a download cancelled",
      needBrowser(() => testPageDisk(ctx, browser, base, { fixtures: FIXTURES, sharded: SHARDED, slowDownload: SLOW_DOWNLOAD })));
    await run("npm package: tarball installed, its example page trains; tsc on the .d.ts",
      needBrowser(() => testPackage(browser)));
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
  console.log(`0 passed, ${TEST_COUNT} failed`);
  process.exit(1);
});
