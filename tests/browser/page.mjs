// Tests of the page (index.html + app/page.js) as a person uses it, driven by tests/browser/run.mjs
// (which serves dist/ at / and tests/fixtures at /fixtures/ and launches Chromium with WebGPU):
//
//   testPageTrainResume  the built-in demo with LoRA: train, pause (saved to OPFS), the charts
//                        moved, the adapter download parses as safetensors with PEFT's names;
//                        reload, the page offers the saved run, resume, train to the end; a
//                        fresh uninterrupted run gives the same losses after the pause step
//   testPageTeach        teach it yourself: sample answer pairs, pick, train on the choices (a
//                        new round against the current model): the chosen answers' reward and
//                        the margin rise; compare streams the reference's and the tuned answer;
//                        the choices download as TRL JSONL
//   testPageDisk         a model from disk through the file input: a GGUF file, the files of a
//                        sharded safetensors folder (each trains a step with finite metrics), a
//                        folder missing its config (an error shown in the model card), a data file
//                        with a bad line (an error naming the file and line, in the data card), and
//                        a URL that is not a model folder (the missing file named, in the model card),
//                        a run over the memory budget refused before loading, and a URL
//                        download cancelled (progress shown; the server sees it closed)
// Each writes screenshots into SCREENSHOTS (default: screenshots/ at the repo root).

import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { assert, isNum } from "./harness.mjs";

/** Opens the page with OPFS empty; returns it once the page script has started. */
async function openPage(ctx, context, base, tag, query = "") {
  const page = await context.newPage();
  ctx.forwardConsole(page, tag);
  page.on("download", () => {}); // downloads are read through window.dpoPage instead
  await page.goto(`${base}/${query}`, { timeout: 60_000 });
  await page.waitForFunction(() => window.dpoPageReady === true, null, { timeout: 60_000 });
  await page.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    await root.removeEntry("dpo-wgpu", { recursive: true }).catch(() => {});
  });
  return page;
}

async function shot(ctx, page, name) {
  fs.mkdirSync(ctx.screenshots, { recursive: true });
  await page.screenshot({ path: path.join(ctx.screenshots, `${name}.png`), fullPage: true });
}

/** Waits until the page's status line matches `re` (or an error is shown). */
async function waitStatus(ctx, page, re, timeoutMs, what) {
  const state = await ctx.pollPage(
    page,
    () => ({
      status: document.getElementById("status").textContent,
      load: document.getElementById("load-status").textContent,
      error: [...document.querySelectorAll("section.card > .notice.error")].map((e) => e.textContent).join(" ").trim(),
      steps: window.dpoPage.history.length,
    }),
    {
      timeoutMs,
      every: 1000,
      done: (s) => re.test(s.status) || re.test(s.load) || Boolean(s.error),
      progress: (s) => `${what}: ${s.status} (${s.steps} steps)`,
    },
  );
  if (state.error) throw new Error(`${what}: the page shows an error: ${state.error}`);
  return state;
}

async function setField(page, id, value) {
  await page.fill(`#${id}`, String(value));
}

async function history(page) {
  return page.evaluate(() => window.dpoPage.history.map((r) => ({ ...r })));
}

/** The safetensors header of bytes: { name: { dtype, shape, data_offsets } }. */
function safetensorsHeader(bytes) {
  const buf = Buffer.from(bytes);
  const len = Number(buf.readBigUInt64LE(0));
  assert(8 + len <= buf.length, "safetensors header length within the file");
  const header = JSON.parse(buf.subarray(8, 8 + len).toString("utf8"));
  delete header.__metadata__;
  for (const [name, t] of Object.entries(header)) {
    const [begin, end] = t.data_offsets;
    const numel = t.shape.reduce((a, b) => a * b, 1);
    assert(t.dtype === "F32" && end - begin === 4 * numel && 8 + len + end <= buf.length, `tensor ${name} fits`);
  }
  return header;
}

export async function testPageTrainResume(ctx, browser, base) {
  const STEPS = 6;
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    // The before/after table and held-out evaluations are checked by test 1; here they would
    // only cost time.
    const page = await openPage(ctx, context, base, "page", "?beforeAfter=0&evaluate=0");
    await shot(ctx, page, "1-start");
    await setField(page, "s-steps", STEPS);
    await page.check("#s-lora");
    await setField(page, "s-rank", 4);
    await setField(page, "s-lr", 0.01);
    await setField(page, "s-save", 0);
    await page.click("#train");
    // Pause once a couple of steps are done; the page saves where it stopped.
    await ctx.pollPage(page, () => ({ n: window.dpoPage.history.length }), {
      timeoutMs: ctx.timeoutMs, every: 300, done: (s) => s.n >= 2, progress: (s) => `page: ${s.n} steps`,
    });
    await page.click("#pause");
    await waitStatus(ctx, page, /^Paused at step/, ctx.timeoutMs, "pause");
    const paused = await page.evaluate(() => ({
      saved: window.dpoPage.lastSave,
      charts: Object.fromEntries(Object.entries(window.dpoPage.charts).map(([k, c]) => [k, c.size])),
      steps: window.dpoPage.history.length,
    }));
    const k = paused.saved?.step;
    assert(Number.isInteger(k) && k >= 2 && k < STEPS, `paused and saved at a step in 2..${STEPS - 1}: ${k}`);
    assert(paused.charts.loss === k && paused.charts.rewards === 2 * k, `charts hold ${k} steps: ${JSON.stringify(paused.charts)}`);
    await shot(ctx, page, "2-paused");

    // The adapter download: PEFT's files and names.
    await page.click("#dl-adapter");
    await page.waitForFunction(() => window.dpoPage.exported, null, { timeout: 60_000 });
    const exported = await page.evaluate(() =>
      Object.fromEntries(Object.entries(window.dpoPage.exported).map(([n, b]) => [n, Array.from(b)])));
    assert(exported["adapter_config.json"] && exported["adapter_model.safetensors"], `adapter files: ${Object.keys(exported)}`);
    const config = JSON.parse(Buffer.from(exported["adapter_config.json"]).toString("utf8"));
    assert(config.peft_type === "LORA" && config.r === 4, `adapter_config.json: ${JSON.stringify(config).slice(0, 200)}`);
    const names = Object.keys(safetensorsHeader(exported["adapter_model.safetensors"]));
    assert(
      names.length > 0 && names.every((n) => /^base_model\.model\.model\.layers\.\d+\.self_attn\.[qv]_proj\.lora_[AB]\.weight$/.test(n)),
      `PEFT tensor names: ${names.slice(0, 4)}`,
    );

    // Reload: the saved run is offered and resumes at the step it was saved.
    await page.reload({ timeout: 60_000 });
    await page.waitForFunction(() => window.dpoPageReady === true, null, { timeout: 60_000 });
    await page.waitForSelector("#resume-banner:not(.hidden)", { timeout: 30_000 });
    const offer = await page.textContent("#resume-text");
    assert(offer.includes(`step ${k} of ${STEPS}`), `the offer names the step: ${offer}`);
    await shot(ctx, page, "3-resume-offer");
    await page.click("#resume");
    await waitStatus(ctx, page, /^Resumed at step/, ctx.timeoutMs, "resume");
    const restored = await page.evaluate(() => ({
      steps: window.dpoPage.history.length, chart: window.dpoPage.charts.loss.size,
      lora: document.getElementById("s-lora").checked, status: document.getElementById("status").textContent,
    }));
    assert(restored.steps === k && restored.chart === k && restored.lora, `restored state: ${JSON.stringify(restored)}`);
    await page.click("#train");
    await waitStatus(ctx, page, /^Done/, ctx.timeoutMs, "resumed training");
    const resumed = await history(page);
    await shot(ctx, page, "4-done");

    // The same run without the pause.
    await page.click("#load");
    await waitStatus(ctx, page, /^Ready to train/, ctx.timeoutMs, "reload");
    await page.click("#train");
    await waitStatus(ctx, page, /^Done/, ctx.timeoutMs, "uninterrupted training");
    const straight = await history(page);
    assert(straight.length === STEPS && resumed.length === STEPS, `steps: ${resumed.length}, ${straight.length}`);
    for (let i = 0; i < STEPS; i++) {
      const [a, b] = [resumed[i].loss, straight[i].loss];
      assert(isNum(a) && Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(b)), `step ${i + 1}: resumed loss ${a} vs uninterrupted ${b}`);
    }
    // A crash in the worker (injected: the module's "fatal" message, as a Rust panic sends it)
    // is reported in the train card, and the last save is offered for resuming.
    await setField(page, "s-save", 2);
    await page.click("#load");
    await waitStatus(ctx, page, /^Ready to train/, ctx.timeoutMs, "reload for the crash");
    await page.click("#train");
    await ctx.pollPage(page, () => ({ saved: window.dpoPage.lastSave?.step ?? 0, n: window.dpoPage.history.length }), {
      timeoutMs: ctx.timeoutMs, every: 300, done: (s) => s.n >= 2 && s.saved === 2, progress: (s) => `crash test: ${s.n} steps`,
    });
    await page.evaluate(() => window.dpoPage.trainer._onMessage({ type: "fatal", error: "worker crashed: injected by the test" }));
    const crash = await page.waitForFunction(
      () => document.querySelector("#train-card > .notice.error")?.textContent, null, { timeout: ctx.timeoutMs });
    const crashMessage = await crash.jsonValue();
    assert(/worker crashed: injected by the test/.test(crashMessage) && /saved at step 2 is kept/.test(crashMessage),
      `crash message: ${crashMessage}`);
    await page.waitForSelector("#resume-banner:not(.hidden)", { timeout: 30_000 });
    const crashOffer = await page.textContent("#resume-text");
    assert(crashOffer.includes("step 2 of"), `after the crash the page offers step 2: ${crashOffer}`);
    await shot(ctx, page, "4b-crash");
    const afterPause = resumed[k];
    return {
      detail: `paused at step ${k}, charts moved; adapter: ${names.length} PEFT tensors; reload offered step ${k}, ` +
        `resumed: step ${k + 1} loss ${afterPause.loss.toFixed(6)} = uninterrupted ${straight[k].loss.toFixed(6)}; ` +
        `losses ${straight.map((r) => r.loss.toFixed(4)).join(" ")}; a worker crash: "${crashMessage}"`,
    };
  } finally {
    await context.close().catch(() => {});
  }
}

export async function testPageTeach(ctx, browser, base) {
  const K = 4;
  const context = await browser.newContext({ viewport: { width: 412, height: 915 }, isMobile: true, hasTouch: true });
  try {
    const page = await openPage(ctx, context, base, "teach");
    await setField(page, "s-save", 0);
    await page.click("#load");
    await waitStatus(ctx, page, /^Ready to train/, ctx.timeoutMs, "loading the demo");
    await page.waitForFunction(() => !document.getElementById("sample").disabled, null, { timeout: ctx.timeoutMs });
    const prompts = await page.evaluate(() => [...document.querySelectorAll("#teach-suggestions option")].map((o) => o.value));
    for (let i = 0; i < K; i++) {
      await page.fill("#teach-prompt", prompts[i % prompts.length]);
      for (let tries = 0; ; tries++) {
        await page.click("#sample");
        await page.waitForSelector("#pair:not(.hidden)", { timeout: ctx.timeoutMs });
        await page.waitForFunction(() => !document.getElementById("sample").disabled, null, { timeout: ctx.timeoutMs });
        if (!(await page.isDisabled("#pick-a")) || tries >= 4) break;
      }
      if (i === 0) await shot(ctx, page, "5-teach-pair");
      await page.click(i % 2 ? "#pick-b" : "#pick-a");
    }
    const choices = await page.evaluate(() => window.dpoPage.choices);
    assert(choices.length === K && choices.every((c) => c.prompt && c.chosen !== c.rejected), `choices: ${JSON.stringify(choices)}`);
    const [download] = await Promise.all([page.waitForEvent("download", { timeout: 30_000 }), page.click("#download-choices")]);
    const jsonl = fs.readFileSync(await download.path(), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    assert(jsonl.length === K && jsonl.every((r) => "prompt" in r && "chosen" in r && "rejected" in r), "choices JSONL");

    await setField(page, "teach-steps", 10);
    await page.click("#train-choices");
    await waitStatus(ctx, page, /^Done/, ctx.timeoutMs, "training on the choices");
    const round = await page.evaluate(() => ({ round: window.dpoPage.round, history: window.dpoPage.history }));
    const first = round.history[0];
    const last = round.history.at(-1);
    assert(round.round === 2 && round.history.length === 10, `round 2 of 10 steps: ${round.round}, ${round.history.length}`);
    assert(Math.abs(first["rewards/chosen"]) < 1e-6 && Math.abs(first["rewards/rejected"]) < 1e-6,
      `the round starts at the current model (every reward 0): ${JSON.stringify(first)}`);
    assert(last["rewards/chosen"] > first["rewards/chosen"] && last["rewards/margins"] > 0,
      `chosen reward rose: ${round.history.map((r) => `${r["rewards/chosen"].toFixed(3)}/${r["rewards/rejected"].toFixed(3)}`).join(" ")}`);

    await page.fill("#compare-prompt", prompts[0]);
    await page.click("#compare");
    await page.waitForFunction(() => window.dpoPage.compared?.prompt, null, { timeout: ctx.timeoutMs });
    const compared = await page.evaluate(() => window.dpoPage.compared);
    assert(compared.reference.length > 0 && compared.tuned.length > 0, `compare: ${JSON.stringify(compared)}`);
    await shot(ctx, page, "6-teach-compare-phone");
    return {
      detail: `${K} choices; round 2: rewards/chosen 0 -> ${last["rewards/chosen"].toFixed(4)}, margin ` +
        `${last["rewards/margins"].toFixed(4)}, loss ${last.loss.toFixed(4)}; compare: ` +
        `reference ${JSON.stringify(compared.reference)} / tuned ${JSON.stringify(compared.tuned)}`,
    };
  } finally {
    await context.close().catch(() => {});
  }
}

export async function testPageDisk(ctx, browser, base, { fixtures, sharded, slowDownload }) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dpo-page-disk-"));
  try {
    const page = await openPage(ctx, context, base, "disk");
    await page.check("input[name=model-source][value=disk]");
    await page.setInputFiles("#data-file", path.join(fixtures, "data.jsonl"));
    await page.waitForFunction(() => /First rows/.test(document.getElementById("data-status").textContent));
    await setField(page, "s-steps", 1);
    await setField(page, "s-batch", 2);
    await setField(page, "s-maxlen", 64);
    await setField(page, "s-save", 0);
    const results = [];
    const trainOne = async (label, files) => {
      await page.setInputFiles("#model-files", files);
      await page.click("#train");
      await waitStatus(ctx, page, /^Done/, ctx.timeoutMs, label);
      const r = await page.evaluate(() => ({ report: window.dpoPage.history[0], info: window.dpoPage.info }));
      assert(isNum(r.report.loss) && isNum(r.report.grad_norm), `${label}: ${JSON.stringify(r.report)}`);
      results.push(`${label}: ${r.info.family}, ${r.info.summary.parameters} parameters, LoRA ${Boolean(r.info.lora)}, loss ${r.report.loss.toFixed(4)}`);
      return r;
    };
    await trainOne("GGUF", [path.join(fixtures, "spm_gguf", "tiny-llama-spm.gguf")]);
    await shot(ctx, page, "7-disk-gguf");

    for (const [name, bytes] of Object.entries(sharded.files)) fs.writeFileSync(path.join(tmp, name), bytes);
    fs.writeFileSync(path.join(tmp, "model.safetensors.index.json"), JSON.stringify(sharded.index));
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) {
      fs.copyFileSync(path.join(fixtures, "llama/policy", f), path.join(tmp, f));
    }
    const folder = fs.readdirSync(tmp).map((f) => path.join(tmp, f));
    await trainOne("sharded folder", folder);

    // Errors shown where they happen.
    await page.setInputFiles("#model-files", folder.filter((f) => !f.endsWith("config.json")));
    await page.click("#load");
    const modelError = await page.waitForFunction(
      () => document.querySelector("#model-card > .notice.error")?.textContent, null, { timeout: ctx.timeoutMs });
    const modelMessage = await modelError.jsonValue();
    assert(/config\.json/.test(modelMessage), `missing config named: ${modelMessage}`);
    await page.setInputFiles("#model-files", folder);
    const bad = path.join(tmp, "bad.jsonl");
    fs.writeFileSync(bad, `${fs.readFileSync(path.join(fixtures, "data.jsonl"), "utf8").trim()}\n{"prompt": "x", "chosen": 3}\n`);
    await page.setInputFiles("#data-file", bad);
    await page.waitForFunction(() => /bad\.jsonl/.test(document.getElementById("data-status").textContent));
    await page.click("#load");
    const dataError = await page.waitForFunction(
      () => document.querySelector("#data-card > .notice.error")?.textContent, null, { timeout: ctx.timeoutMs });
    const dataMessage = await dataError.jsonValue();
    const lines = fs.readFileSync(bad, "utf8").trim().split("\n").length;
    assert(new RegExp(`^bad\\.jsonl:${lines}\\b`).test(dataMessage), `the file and bad line (${lines}) named: ${dataMessage}`);
    // A run that would not fit is refused before its weights reach the GPU (a budget the page
    // sets; the adapter's buffer limits are the default).
    await page.setInputFiles("#data-file", path.join(fixtures, "data.jsonl"));
    await page.waitForFunction(() => /data\.jsonl/.test(document.getElementById("data-status").textContent));
    await page.setInputFiles("#model-files", [path.join(fixtures, "spm_gguf", "tiny-llama-spm.gguf")]);
    await page.click("summary");
    await setField(page, "s-budget", 0.05);
    await page.click("#load");
    const fitError = await page.waitForFunction(
      () => document.querySelector("#model-card > .notice.error")?.textContent, null, { timeout: ctx.timeoutMs });
    const fitMessage = await fitError.jsonValue();
    assert(/needs about .* \(weights .*\) but 51\.2 KiB are available: use LoRA/.test(fitMessage), `refusal: ${fitMessage}`);
    await setField(page, "s-budget", "");

    // A URL that is not a model folder: the message names the missing file and where it looked.
    await page.check("input[name=model-source][value=url]");
    await page.fill("#model-url", "/fixtures/no-such-model/");
    await page.click("#load");
    const urlError = await page.waitForFunction(
      () => document.querySelector("#model-card > .notice.error")?.textContent, null, { timeout: ctx.timeoutMs });
    const urlMessage = await urlError.jsonValue();
    assert(/config\.json not found at .*no-such-model\/config\.json \(404\)/.test(urlMessage), `bad URL named: ${urlMessage}`);
    await shot(ctx, page, "8-disk-errors");

    // A download in progress shows bytes and speed; Cancel stops it (the server sees the
    // connection closed long before the end) and the page can load again.
    await page.fill("#model-url", "/__test__/slow/");
    await page.click("#load");
    await page.waitForFunction(() => {
      const text = document.getElementById("load-text").textContent;
      return !document.getElementById("load-progress").classList.contains("hidden") &&
        /model\.safetensors: [\d.]+ [KM]iB of 256\.0 MiB, [\d.]+ [KM]iB\/s/.test(text) &&
        document.getElementById("load-bar").value > 0;
    }, null, { timeout: ctx.timeoutMs });
    const progressText = await page.textContent("#load-text");
    await shot(ctx, page, "8b-download-progress");
    const hungUpBefore = slowDownload.hungUp.length;
    await page.click("#cancel-load");
    await page.waitForFunction(() => document.getElementById("load-status").textContent === "Cancelled.",
      null, { timeout: 30_000 });
    const deadline = Date.now() + 10_000;
    while (slowDownload.hungUp.length === hungUpBefore && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert(slowDownload.hungUp.length > hungUpBefore, "the server saw the download closed after Cancel");
    const sent = slowDownload.hungUp.at(-1);
    assert(sent < 64 << 20, `the download stopped early (${sent} bytes sent of 256 MiB)`);
    const after = await page.evaluate(() => ({
      progressHidden: document.getElementById("load-progress").classList.contains("hidden"),
      cancelDisabled: document.getElementById("cancel-load").disabled,
      loadEnabled: !document.getElementById("load").disabled,
    }));
    assert(after.progressHidden && after.cancelDisabled && after.loadEnabled,
      `after Cancel: progress hidden, Cancel disabled, Load enabled (${JSON.stringify(after)})`);
    return {
      detail: `${results.join("; ")}; errors: model card "${modelMessage}", data card "${dataMessage}", ` +
        `bad URL "${urlMessage}", too big "${fitMessage}"; cancelled at "${progressText}" ` +
        `(the server had sent ${(sent / 1048576).toFixed(1)} MiB)`,
    };
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
