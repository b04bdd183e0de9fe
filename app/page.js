// The page: choose a model and preference data, set the options, train in a worker with live
// charts, teach the model your own preferences, compare it with the reference, keep the run in
// the browser (OPFS) and download the results. Everything runs through web/dpo-trainer.js, the
// same module other sites embed.
//
// Automation: /?autorun=1[&steps=N][&lr=X][&generate=1] trains the demo by itself and then sets
//   window.dpoResult = { steps, loss_first, loss_last, accuracy_last (held-out reward accuracy
//   after training), train_accuracy_last, eval_accuracy_before, ..., device, before_after (the
//   demo's before/after lines when the whole schedule ran: [{ prompt, before, after }]) } (plus
//   generated_text, generated_tokens, tokens_per_second with generate=1), or window.dpoError.
// window.dpoPage exposes the page's state to tests (history, evals, choices, charts, info).

import { DpoTrainer, checkWebGPU } from "../web/dpo-trainer.js";
import { LineChart } from "./charts.js";

const $ = (id) => document.getElementById(id);
const SAVE_NAME = "page";
const DEMO_PROMPT = "write a happy line about the park :";
const DEMO_SUGGESTIONS = [
  DEMO_PROMPT,
  "write a sad line about the river :",
  "write a happy line about the beach :",
  "write a sad line about the week :",
];
const DEFAULT_SAVE_EVERY = 10;
// ?beforeAfter=0 skips the demo's before/after table (tests that measure other things).
const SHOW_BEFORE_AFTER = new URLSearchParams(location.search).get("beforeAfter") !== "0";
/** The demo's before/after table: a subject of the training pairs and a held-out one. */
const DEMO_BEFORE_AFTER = [
  "write a happy line about the park :",
  "write a sad line about the park :",
  "write a happy line about the garden :",
  "write a sad line about the garden :",
];

const S = {
  trainer: null,
  info: null,
  loadedKey: null, // the choices the trainer was created with (a change means reloading)
  history: [], // step reports of this round
  evals: [], // { step, phase, metrics }
  choices: [], // { prompt, chosen, rejected }
  round: 1,
  running: false,
  busy: false,
  stopRequested: false,
  pair: null,
  dataText: null,
  dataName: null,
  modelFiles: [],
  loadAbort: null,
  lastSave: null,
  charts: null,
};
window.dpoPage = S;

// ---------------------------------------------------------------------------------------------
// Messages where they happen.

function cardNotice(card) {
  let box = $(card).querySelector(":scope > .notice.error");
  if (!box) {
    box = document.createElement("div");
    box.className = "notice error";
    box.setAttribute("role", "alert");
    $(card).querySelector("h2").after(box);
  }
  return box;
}

function showError(card, err) {
  const msg = err?.message ?? String(err);
  console.error(err);
  window.dpoError = msg;
  cardNotice(card).textContent = msg;
}

function clearErrors() {
  for (const box of document.querySelectorAll("section.card > .notice.error")) box.textContent = "";
  delete window.dpoError;
}

const num = (x, digits = 4) => (Number.isFinite(x) ? x.toFixed(digits) : "–");
const pct = (x) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)} %` : "–");
const bytes = (n) =>
  n == null ? "?" : n < 1024 ** 2 ? `${(n / 1024).toFixed(1)} KiB` : n < 1024 ** 3
    ? `${(n / 1024 ** 2).toFixed(1)} MiB` : `${(n / 1024 ** 3).toFixed(2)} GiB`;
const evalAccuracy = (m) => m?.["rewards/accuracies"] ?? NaN;

function setStatus(text) {
  $("status").textContent = text;
}

// ---------------------------------------------------------------------------------------------
// Choices on the page.

function modelSource() {
  return document.querySelector("input[name=model-source]:checked").value;
}

function dataSource() {
  return document.querySelector("input[name=data-source]:checked").value;
}

function syncSourceBoxes() {
  const model = modelSource();
  $("model-disk").classList.toggle("hidden", model !== "disk");
  $("model-url-box").classList.toggle("hidden", model !== "url");
  const demoData = document.querySelector("input[name=data-source][value=demo]");
  demoData.disabled = model !== "demo";
  if (model !== "demo" && demoData.checked) {
    document.querySelector("input[name=data-source][value=file]").checked = true;
  }
  $("data-file-box").classList.toggle("hidden", dataSource() !== "file");
  // LoRA is on by default for real models, off for the tiny demo (it trains every weight).
  if (!$("s-lora").dataset.touched) $("s-lora").checked = model !== "demo";
  placeholders();
}

/** Placeholders show the defaults the run will use. */
function placeholders() {
  const demo = modelSource() === "demo";
  const d = demo
    ? { beta: 0.1, lr: 1e-3, maxSteps: 60, batchSize: 16, maxLength: 32, seed: 42, sched: "constant" }
    : { beta: 0.1, lr: 1e-6, maxSteps: "1 epoch", batchSize: 8, maxLength: 1024, seed: 42, sched: "linear" };
  $("s-beta").placeholder = d.beta;
  $("s-lr").placeholder = d.lr;
  $("s-steps").placeholder = d.maxSteps;
  $("s-epochs").placeholder = 1;
  $("s-batch").placeholder = d.batchSize;
  $("s-accum").placeholder = 1;
  $("s-warmup").placeholder = 0;
  $("s-maxlen").placeholder = d.maxLength;
  $("s-seed").placeholder = d.seed;
  $("s-sched").options[0].textContent = `default (${d.sched})`;
  $("s-loss").options[0].textContent = demo ? "default (sigmoid + sft)" : "default (sigmoid)";
}

/** The training options from the settings fields; throws naming the field. */
function settings() {
  const out = {};
  for (const input of document.querySelectorAll("#settings-card [data-option]")) {
    const text = input.value.trim();
    if (!text) continue;
    const value = Number(text);
    const name = input.closest("label").firstChild.textContent.trim();
    if (!Number.isFinite(value)) throw new Error(`${name}: ${JSON.stringify(text)} is not a number`);
    if (input.type === "number" && !Number.isInteger(value)) throw new Error(`${name}: ${text} is not a whole number`);
    out[input.dataset.option] = value;
  }
  if ($("s-loss").value) out.loss = $("s-loss").value.split(",");
  if ($("s-sched").value) out.lrScheduler = $("s-sched").value;
  for (const select of document.querySelectorAll("#more-settings [data-choice]")) {
    if (select.value) out[select.dataset.choice] = select.value;
  }
  for (const box of document.querySelectorAll("#more-settings [data-flag]")) {
    if (box.checked) out[box.dataset.flag] = true;
  }
  const budget = $("s-budget").value.trim();
  if (budget) {
    const mib = Number(budget);
    if (!(mib > 0)) throw new Error(`GPU memory budget: ${JSON.stringify(budget)} is not a positive number of MiB`);
    out.memoryLimits = { budget: Math.round(mib * 1024 * 1024) };
  }
  if ($("s-lora").checked) {
    const rank = $("s-rank").value.trim();
    out.loraRank = rank ? Number(rank) : 8;
    if (!Number.isInteger(out.loraRank)) throw new Error(`LoRA rank: ${rank} is not a whole number`);
    const targets = $("s-targets").value.split(",").map((t) => t.trim()).filter(Boolean);
    if (targets.length) out.loraTargets = targets;
  }
  return out;
}

function saveEvery() {
  const text = $("s-save").value.trim();
  return text === "" ? DEFAULT_SAVE_EVERY : Math.max(0, Math.floor(Number(text)) || 0);
}

/** Everything DpoTrainer.create gets, and a key that changes when any of it does. */
function createOptions() {
  const options = settings();
  const model = modelSource();
  if (model === "disk") {
    if (S.modelFiles.length === 0) throw Object.assign(new Error("choose the model's files first"), { card: "model-card" });
    options.modelFiles = S.modelFiles;
  } else if (model === "url") {
    const url = $("model-url").value.trim();
    if (!url) throw Object.assign(new Error("type the model's URL or hf: reference first"), { card: "model-card" });
    options.modelUrl = url;
  }
  if (dataSource() === "file") {
    if (!S.dataText) throw Object.assign(new Error("choose a data file first"), { card: "data-card" });
    options.trainData = S.dataText;
  }
  const key = JSON.stringify({
    ...options,
    modelFiles: S.modelFiles.map((f) => [f.name, f.size, f.lastModified]),
    trainData: S.dataName,
  });
  return { options, key };
}

// ---------------------------------------------------------------------------------------------
// Data preview.

function parseRows(text) {
  const trimmed = text.replace(/^\uFEFF/, "").trim();
  if (trimmed.startsWith("[")) return JSON.parse(trimmed);
  const rows = [];
  for (const line of trimmed.split("\n")) {
    if (!line.trim()) continue;
    try {
      rows.push(JSON.parse(line));
    } catch {
      rows.push({ prompt: "(not valid JSON)", chosen: line.slice(0, 80), rejected: "" });
    }
    if (rows.length >= 5) break;
  }
  return rows;
}

function showText(value) {
  if (Array.isArray(value)) return value.map((m) => `${m.role}: ${m.content}`).join(" | ");
  return value == null ? "" : String(value);
}

function previewData(text, name) {
  const box = $("data-preview");
  box.textContent = "";
  let rows;
  try {
    rows = parseRows(text).slice(0, 5);
  } catch (err) {
    $("data-status").textContent = `${name}: ${err.message}`;
    return;
  }
  const lines = text.split("\n").filter((l) => l.trim()).length;
  $("data-status").textContent = `${name}: ${bytes(text.length)}, ${lines} lines. First rows:`;
  const table = document.createElement("table");
  table.innerHTML = "<thead><tr><th>prompt</th><th>chosen</th><th>rejected</th></tr></thead>";
  const body = table.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const key of ["prompt", "chosen", "rejected"]) {
      const t = showText(row?.[key]);
      tr.insertCell().textContent = t.length > 140 ? `${t.slice(0, 140)}…` : t;
    }
  }
  box.append(table);
}

// ---------------------------------------------------------------------------------------------
// Loading.

function showFacts(info) {
  const s = info.summary;
  const facts = [
    ["Model", `${info.demo ? "built-in demo, " : ""}${info.family}`],
    ["Parameters", s.parameters.toLocaleString("en")],
    ["Trained", `${s.trainableParameters.toLocaleString("en")}${info.lora ? ` (LoRA r${info.lora.rank} on ${info.lora.targets.join(", ")})` : " (every weight)"}`],
    ["Device", info.device],
    ["Memory", memoryText(s.memory)],
  ];
  const dl = $("model-facts");
  dl.textContent = "";
  for (const [k, v] of facts) {
    dl.append(Object.assign(document.createElement("dt"), { textContent: k }));
    dl.append(Object.assign(document.createElement("dd"), { textContent: v }));
  }
  dl.classList.remove("hidden");
  const why = s.dropReason === "prompt_fills_max_length" ? "their prompt fills max length" : s.dropReason;
  const part = (d, what) =>
    d ? `${what}: ${d.kept} pairs kept${d.dropped ? `, ${d.dropped} dropped (${why})` : ""}` : null;
  $("data-status").textContent = [part(s.train, `Training (${s.train.source})`), part(s.eval, "held out")]
    .filter(Boolean).join("; ") + (s.maxLengthFitted ? `; max length fitted to ${s.maxLengthFitted}` : "") + ".";
}

/** The run's device memory, by what holds it. */
function memoryText(m) {
  if (!m) return "–";
  const reference = m.reference ? `reference ${bytes(m.reference)}, ` : "";
  return `about ${bytes(m.total)}: weights ${bytes(m.weights)}, ${reference}gradients ${bytes(m.gradients)}, ` +
    `optimizer ${bytes(m.optimizer)}, activations ${bytes(m.activations)} (largest buffer ${bytes(m.largestBuffer)})`;
}

function showProgress({ file, loaded, total }) {
  const box = $("load-progress");
  box.classList.remove("hidden");
  const p = S.progress ?? (S.progress = { start: performance.now(), files: new Map() });
  p.files.set(file, { loaded, total });
  let sumLoaded = 0;
  let sumTotal = 0;
  for (const f of p.files.values()) {
    sumLoaded += f.loaded;
    sumTotal += f.total ?? f.loaded;
  }
  const seconds = (performance.now() - p.start) / 1000;
  $("load-bar").max = Math.max(sumTotal, 1);
  $("load-bar").value = sumLoaded;
  $("load-text").textContent = `${file}: ${bytes(sumLoaded)} of ${bytes(sumTotal)}, ` +
    `${bytes(sumLoaded / Math.max(seconds, 1e-3))}/s`;
}

async function load() {
  clearErrors();
  let created;
  try {
    created = createOptions();
  } catch (err) {
    showError(err.card ?? "settings-card", err);
    return false;
  }
  S.trainer?.terminate();
  S.trainer = null;
  S.info = null;
  S.loadedKey = null;
  S.progress = null;
  S.loadAbort = new AbortController();
  $("load-status").textContent = "Loading…";
  setStatus("Loading the model and data…");
  $("cancel-load").disabled = false;
  setBusy(true);
  try {
    S.trainer = await DpoTrainer.create({
      ...created.options,
      onProgress: showProgress,
      signal: S.loadAbort.signal,
    });
    S.info = await S.trainer.info();
    S.loadedKey = created.key;
    resetRound();
    S.round = 1;
    S.choices = S.choices ?? [];
    showFacts(S.info);
    $("load-status").textContent = `Ready: ${S.info.trainExamples} training pairs, ${S.info.totalSteps} steps.`;
    setStatus("Ready to train.");
    return true;
  } catch (err) {
    const original = err?.message ?? String(err);
    const field = original.split(/[:\s]/)[0];
    const settingsField = /^(lr|beta|batchSize|maxSteps|maxLength|epochs|loss\w*|seed|valSplit|lora\w*|warmupSteps|gradientAccumulationSteps|maxGradNorm|weightDecay|adam\w+|sgd\w+|labelSmoothing|simpoGamma|evalBatchSize|trainableLayers|truncationMode|optimizer|lrScheduler|dropout)$/;
    const card = settingsField.test(field) ? "settings-card"
      : /^(trainData|evalData)$/.test(field) ? "data-card" : "model-card";
    // The module names the data "trainData"; here it is the file the person chose.
    err = new Error(original.replace(/^trainData(?=[:\s])/, S.dataName ?? "the data"), { cause: err });
    showError(card, err);
    $("load-status").textContent = err?.cause?.name === "AbortError" ? "Cancelled." : "Not loaded.";
    S.trainer?.terminate();
    S.trainer = null;
    return false;
  } finally {
    S.loadAbort = null;
    $("load-progress").classList.add("hidden");
    setBusy(false);
  }
}

// ---------------------------------------------------------------------------------------------
// Training.

function makeCharts() {
  const box = $("charts");
  box.textContent = "";
  S.charts = {
    loss: new LineChart(box, { title: "Loss", yLabel: "loss", series: [{ key: "loss", name: "loss", color: "var(--accent)" }] }),
    accuracy: new LineChart(box, {
      title: "Reward accuracy", yLabel: "share of pairs", yMin: 0, yMax: 1,
      series: [{ key: "rewards/accuracies", name: "accuracy", color: "var(--accent)" }],
    }),
    margin: new LineChart(box, {
      title: "Reward margin (chosen − rejected)", yLabel: "margin",
      series: [{ key: "rewards/margins", name: "margin", color: "var(--accent)" }],
    }),
    rewards: new LineChart(box, {
      title: "Rewards", yLabel: "β · log-ratio",
      series: [
        { key: "rewards/chosen", name: "chosen", color: "var(--ok)" },
        { key: "rewards/rejected", name: "rejected", color: "var(--accent2)" },
      ],
    }),
  };
}

function resetRound() {
  S.history = [];
  S.evals = [];
  makeCharts();
  for (const id of ["step", "loss", "sps", "tps", "eta", "eval-before", "eval-after"]) $(id).textContent = "–";
}

function onReport(r, { draw = true } = {}) {
  S.history.push(r);
  if (draw) for (const chart of Object.values(S.charts)) chart.add(r.step, r);
  $("step").textContent = `${r.step} / ${r.total_steps}`;
  $("loss").textContent = num(r.loss);
  $("sps").textContent = num(r.seconds, 2);
  $("tps").textContent = r.tokens ? Math.round(r.tokens / Math.max(r.seconds, 1e-9)).toLocaleString("en") : "–";
  const recent = S.history.slice(-5).map((h) => h.seconds);
  const mean = recent.reduce((a, b) => a + b, 0) / recent.length;
  const left = (r.total_steps - r.step) * mean;
  $("eta").textContent = left < 60 ? `${left.toFixed(0)} s` : `${(left / 60).toFixed(1)} min`;
}

function setBusy(busy) {
  S.busy = busy;
  const ready = Boolean(S.trainer) && !busy;
  $("load").disabled = busy;
  $("train").disabled = busy;
  $("pause").disabled = !S.running;
  $("stop").disabled = !S.running;
  for (const id of ["sample", "compare", "save", "dl-model", "dl-metrics"]) $(id).disabled = !ready;
  $("dl-adapter").disabled = !ready || !S.info?.lora;
  $("train-choices").disabled = !ready || S.choices.length === 0;
  $("download-choices").disabled = S.choices.length === 0;
  $("cancel-load").disabled = !S.loadAbort;
}

// ?evaluate=0 skips the held-out evaluations (tests that measure other things).
const EVALUATE = new URLSearchParams(location.search).get("evaluate") !== "0";

async function evaluate(phase) {
  if (!S.info?.evalExamples || !EVALUATE) return null;
  setStatus(`Evaluating ${S.info.evalExamples} held-out pairs…`);
  const metrics = await S.trainer.evaluate();
  const step = S.history.at(-1)?.step ?? S.info.stepsDone;
  S.evals.push({ step, phase, metrics });
  $(phase === "before" ? "eval-before" : "eval-after").textContent = pct(evalAccuracy(metrics));
  return metrics;
}

/** Trains to the end of the schedule (or until paused / stopped). Returns the new reports. */
async function train() {
  if (S.running || S.busy) return [];
  clearErrors();
  setStatus("Starting…");
  let key;
  try {
    key = createOptions().key;
  } catch (err) {
    showError(err.card ?? "settings-card", err);
    return [];
  }
  if (!S.trainer || (S.round === 1 && key !== S.loadedKey && S.info?.stepsDone === 0)) {
    if (!(await load())) return [];
  }
  S.running = true;
  S.stopRequested = false;
  setBusy(true);
  const reports = [];
  try {
    S.info = await S.trainer.info();
    if (S.info.stepsDone === 0 && !S.evals.some((e) => e.phase === "before")) await evaluate("before");
    setStatus(`Training: round ${S.round}, ${S.info.totalSteps - S.info.stepsDone} steps on ${S.info.trainExamples} pairs…`);
    const every = saveEvery();
    await S.trainer.train({
      onStep: async (r) => {
        reports.push(r);
        onReport(r);
        if (every > 0 && r.step % every === 0 && r.step < r.total_steps) await save("autosave");
      },
    });
    S.info = await S.trainer.info();
    const finished = S.info.stepsDone >= S.info.totalSteps;
    if (finished || S.stopRequested) await evaluate("after");
    await save(finished ? "end of training" : "pause");
    if (finished && S.info.demo && S.round === 1 && SHOW_BEFORE_AFTER) await beforeAfter(DEMO_BEFORE_AFTER);
    setStatus(finished || S.stopRequested ? `Done: ${S.info.stepsDone} steps.`
      : `Paused at step ${S.info.stepsDone} of ${S.info.totalSteps}.`);
  } catch (err) {
    fail("train-card", err);
  } finally {
    S.running = false;
    setBusy(false);
  }
  return reports;
}

/** A failure while training: a crash in the worker keeps the last save. */
function fail(card, err) {
  const msg = err?.message ?? String(err);
  if (/worker crashed|terminated|worker error/.test(msg)) {
    S.trainer = null;
    const kept = S.lastSave ? ` The run saved at step ${S.lastSave.step} is kept: reload the page or press Resume.` : "";
    showError(card, new Error(`${msg}.${kept}`));
    refreshSaved();
  } else {
    showError(card, err);
  }
  setStatus("Stopped by an error.");
}

// ---------------------------------------------------------------------------------------------
// Keeping the run.

function formState() {
  const fields = {};
  for (const input of document.querySelectorAll("#settings-card input, #settings-card select")) {
    fields[input.id] = input.type === "checkbox" ? input.checked : input.value;
  }
  return { fields, modelSource: modelSource(), dataSource: dataSource(), modelUrl: $("model-url").value };
}

async function save(why) {
  if (!S.trainer) return null;
  try {
    S.lastSave = await S.trainer.saveToOpfs(SAVE_NAME, {
      extra: { form: formState(), history: S.history, evals: S.evals, choices: S.choices, round: S.round, why },
    });
    $("save-status").textContent = `Saved in this browser at step ${S.lastSave.step} (${why}).`;
    return S.lastSave;
  } catch (err) {
    $("save-status").textContent = `Could not save: ${err?.message ?? err}`;
    return null;
  }
}

async function refreshSaved() {
  let saved = [];
  try {
    saved = await DpoTrainer.listSaved();
  } catch {
    return;
  }
  const run = saved.find((r) => r.name === SAVE_NAME);
  $("resume-banner").classList.toggle("hidden", !run || Boolean(S.trainer));
  if (run) {
    const when = new Date(run.savedAt).toLocaleString();
    $("resume-text").textContent =
      `A run saved in this browser stopped at step ${run.step} of ${run.totalSteps} (round ${run.extra?.round ?? 1}, ${when}). `;
  }
  return run;
}

async function resume() {
  clearErrors();
  setBusy(true);
  $("resume").disabled = true;
  try {
    S.trainer?.terminate();
    S.progress = null;
    S.trainer = await DpoTrainer.resumeSaved(SAVE_NAME, { onProgress: showProgress });
    S.info = await S.trainer.info();
    const saved = (await DpoTrainer.listSaved()).find((r) => r.name === SAVE_NAME);
    const extra = saved?.extra ?? {};
    restoreForm(extra.form);
    S.round = extra.round ?? 1;
    S.choices = extra.choices ?? [];
    resetRound();
    for (const r of extra.history ?? []) onReport(r);
    S.evals = extra.evals ?? [];
    for (const e of S.evals) {
      $(e.phase === "before" ? "eval-before" : "eval-after").textContent = pct(evalAccuracy(e.metrics));
    }
    S.loadedKey = createOptionsKeySafe();
    S.lastSave = saved;
    showFacts(S.info);
    showChoices();
    $("resume-banner").classList.add("hidden");
    setStatus(`Resumed at step ${S.info.stepsDone} of ${S.info.totalSteps} (round ${S.round}).`);
  } catch (err) {
    showError("train-card", err);
  } finally {
    $("resume").disabled = false;
    $("load-progress").classList.add("hidden");
    setBusy(false);
  }
}

function createOptionsKeySafe() {
  try {
    return createOptions().key;
  } catch {
    return null;
  }
}

function restoreForm(form) {
  if (!form) return;
  for (const [id, value] of Object.entries(form.fields ?? {})) {
    const input = $(id);
    if (!input) continue;
    if (input.type === "checkbox") input.checked = value;
    else input.value = value;
  }
  const pick = (name, value) => {
    const radio = document.querySelector(`input[name=${name}][value=${value}]`);
    if (radio) radio.checked = true;
  };
  pick("model-source", form.modelSource);
  pick("data-source", form.dataSource);
  $("model-url").value = form.modelUrl ?? "";
  $("s-lora").dataset.touched = "1";
  syncSourceBoxes();
}

function download(name, data, type = "application/octet-stream") {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([data], { type }));
  a.download = name;
  a.textContent = `${name} (${bytes(data.length ?? data.size)})`;
  $("downloads").append(a);
  a.click();
}

async function downloadModel(merge) {
  if (!S.trainer || S.running) return;
  setBusy(true);
  try {
    const files = await S.trainer.exportModel({ merge });
    $("downloads").textContent = "";
    for (const [name, data] of Object.entries(files)) download(name, data);
    window.dpoPage.exported = files;
  } catch (err) {
    showError("keep-card", err);
  } finally {
    setBusy(false);
  }
}

/** metrics.jsonl as the CLI writes it: one record per step, eval_-prefixed evaluations. */
function metricsJsonl() {
  const lines = S.history.map((r) => JSON.stringify(r));
  for (const e of S.evals) {
    const record = { step: e.step };
    for (const [k, v] of Object.entries(e.metrics ?? {})) record[`eval_${k}`] = v;
    lines.push(JSON.stringify(record));
  }
  return `${lines.join("\n")}\n`;
}

// ---------------------------------------------------------------------------------------------
// Teach it yourself, and compare.

function showChoices() {
  const n = S.choices.length;
  $("choices-status").textContent = n === 0 ? "No choices yet." : `${n} choice${n === 1 ? "" : "s"} kept.`;
  setBusy(S.busy);
}

async function sample() {
  if (!S.trainer || S.busy) return;
  const prompt = $("teach-prompt").value;
  const temperature = Number($("teach-temp").value);
  clearErrors();
  setBusy(true);
  try {
    // Seeds in sequence: the same clicks give the same answers (samplePair uses seed and seed + 1).
    const seed = S.sampleSeed ?? 0;
    S.sampleSeed = seed + 2;
    const pair = await S.trainer.samplePair(prompt, { temperature, seed, maxNewTokens: 16 });
    S.pair = pair;
    $("answer-a").textContent = pair.answers[0];
    $("answer-b").textContent = pair.answers[1];
    $("pair").classList.remove("hidden");
    $("skip").classList.remove("hidden");
    const same = pair.answers[0] === pair.answers[1];
    $("pick-a").disabled = same;
    $("pick-b").disabled = same;
    if (same) $("choices-status").textContent = "Both answers are the same: skip, or sample again at a higher temperature.";
  } catch (err) {
    showError("teach-card", err);
  } finally {
    setBusy(false);
  }
}

function pick(which) {
  if (!S.pair) return;
  const [a, b] = S.pair.answers;
  if (which === "a") S.choices.push({ prompt: S.pair.prompt, chosen: a, rejected: b });
  if (which === "b") S.choices.push({ prompt: S.pair.prompt, chosen: b, rejected: a });
  S.pair = null;
  $("pair").classList.add("hidden");
  $("skip").classList.add("hidden");
  showChoices();
}

async function trainOnChoices() {
  if (!S.trainer || S.busy || S.choices.length === 0) return;
  clearErrors();
  const steps = Math.max(1, Math.floor(Number($("teach-steps").value)) || 10);
  setBusy(true);
  try {
    setStatus(`Starting round ${S.round + 1} on ${S.choices.length} choices…`);
    S.info = await S.trainer.addPairs(S.choices, {
      maxSteps: steps,
      batchSize: Math.min(S.choices.length, 16),
    });
    S.round += 1;
    resetRound();
  } catch (err) {
    showError("teach-card", err);
    return;
  } finally {
    setBusy(false);
  }
  await train();
}

async function generateInto(out, prompt, options) {
  out.textContent = "";
  const shown = document.createElement("span");
  shown.className = "prompt";
  shown.textContent = prompt;
  const text = document.createTextNode("");
  out.append(shown, text);
  const g = await S.trainer.generate(prompt, { ...options, onToken: (delta) => (text.data += delta) });
  text.data = g.text;
  return g;
}

async function compare(prompt = $("compare-prompt").value) {
  if (!S.trainer || S.busy) return;
  $("compare-prompt").value = prompt;
  const maxNewTokens = Math.max(1, Math.floor(Number($("compare-tokens").value)) || 16);
  setBusy(true);
  try {
    const reference = await generateInto($("out-reference"), prompt, { model: "reference", maxNewTokens });
    const tuned = await generateInto($("out-tuned"), prompt, { maxNewTokens });
    S.compared = { prompt, reference: reference.text, tuned: tuned.text };
    return S.compared;
  } catch (err) {
    showError("compare-card", err);
  } finally {
    setBusy(false);
  }
}

/** Greedy lines of the reference and the tuned model for each prompt, in a table. */
async function beforeAfter(prompts) {
  const table = $("before-after");
  const body = table.tBodies[0];
  body.textContent = "";
  table.classList.remove("hidden");
  S.beforeAfter = [];
  setStatus("Writing the before/after lines…");
  for (const prompt of prompts) {
    const row = body.insertRow();
    row.insertCell().textContent = prompt;
    const cells = [row.insertCell(), row.insertCell()];
    const lines = [];
    for (const [i, model] of ["reference", "policy"].entries()) {
      const g = await S.trainer.generate(prompt, {
        model, maxNewTokens: 10, onToken: (delta) => (cells[i].textContent += delta),
      });
      cells[i].textContent = g.text;
      lines.push(g.text);
    }
    S.beforeAfter.push({ prompt, before: lines[0], after: lines[1] });
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring.

for (const radio of document.querySelectorAll("input[name=model-source], input[name=data-source]")) {
  radio.addEventListener("change", syncSourceBoxes);
}
$("s-lora").addEventListener("change", () => ($("s-lora").dataset.touched = "1"));

function takeModelFiles(files) {
  S.modelFiles = Array.from(files);
  $("model-files-list").textContent = S.modelFiles.map((f) => `${f.name} (${bytes(f.size)})`).join(", ");
}
$("model-files").addEventListener("change", (e) => takeModelFiles(e.target.files));
const drop = $("model-drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  takeModelFiles(e.dataTransfer.files);
});
$("data-file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  S.dataText = await file.text();
  S.dataName = file.name;
  previewData(S.dataText, file.name);
});
$("load").addEventListener("click", load);
$("cancel-load").addEventListener("click", () => S.loadAbort?.abort());
$("train").addEventListener("click", () => train());
$("pause").addEventListener("click", () => {
  S.trainer?.pause();
  setStatus("Pausing after this step…");
});
$("stop").addEventListener("click", () => {
  S.stopRequested = true;
  S.trainer?.pause();
  setStatus("Stopping after this step…");
});
$("sample").addEventListener("click", sample);
$("pick-a").addEventListener("click", () => pick("a"));
$("pick-b").addEventListener("click", () => pick("b"));
$("skip").addEventListener("click", () => pick(null));
$("train-choices").addEventListener("click", trainOnChoices);
$("download-choices").addEventListener("click", () =>
  download("my-choices.jsonl", `${S.choices.map((c) => JSON.stringify(c)).join("\n")}\n`, "application/jsonl"));
$("compare").addEventListener("click", () => compare());
$("save").addEventListener("click", () => save("saved by hand"));
$("dl-adapter").addEventListener("click", () => downloadModel(false));
$("dl-model").addEventListener("click", () => downloadModel(true));
$("dl-metrics").addEventListener("click", () => download("metrics.jsonl", metricsJsonl(), "application/jsonl"));
$("resume").addEventListener("click", resume);
$("discard").addEventListener("click", async () => {
  await DpoTrainer.deleteSaved(SAVE_NAME);
  $("resume-banner").classList.add("hidden");
});
for (const p of DEMO_SUGGESTIONS) $("teach-suggestions").append(Object.assign(document.createElement("option"), { value: p }));
$("teach-prompt").value = DEMO_PROMPT;
$("compare-prompt").value = DEMO_PROMPT;
syncSourceBoxes();
makeCharts();
setBusy(false);

// ---------------------------------------------------------------------------------------------
// Start: WebGPU check, saved run, automation.

async function autorun(params) {
  if (params.has("steps")) $("s-steps").value = params.get("steps");
  if (params.has("lr")) $("s-lr").value = params.get("lr");
  const t0 = performance.now();
  try {
    $("s-save").value = "0"; // automation measures training, not saving
    const reports = await train();
    if (window.dpoError) throw new Error(window.dpoError);
    if (reports.length === 0) throw new Error("no training step was run");
    const before = S.evals.find((e) => e.phase === "before")?.metrics;
    const after = S.evals.find((e) => e.phase === "after")?.metrics;
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const result = {
      steps: reports.length,
      loss_first: reports[0].loss,
      loss_last: reports.at(-1).loss,
      accuracy_last: evalAccuracy(after),
      train_accuracy_last: reports.at(-1)["rewards/accuracies"],
      eval_accuracy_before: evalAccuracy(before),
      eval_loss_before: before?.loss,
      eval_loss_after: after?.loss,
      seconds_per_step: mean(reports.map((r) => r.seconds)),
      seconds_first_step: reports[0].seconds,
      total_seconds: (performance.now() - t0) / 1000,
      device: S.info.device,
      before_after: S.beforeAfter ?? null,
    };
    if (params.get("generate") === "1") {
      const out = $("out-tuned");
      const g = await generateInto(out, DEMO_PROMPT, { maxNewTokens: 8 });
      result.generated_text = g.text;
      result.generated_tokens = g.newTokens.length;
      result.tokens_per_second = g.tokensPerSecond;
    }
    window.dpoResult = result;
  } catch (err) {
    window.dpoError = err?.message ?? String(err);
  }
}

const gpu = await checkWebGPU();
if (!gpu.ok) {
  const msg = `WebGPU is not available: ${gpu.reason}. This page needs WebGPU to train.`;
  $("gpu-status").className = "notice error";
  $("gpu-status").textContent = msg;
  for (const id of ["load", "train"]) $(id).disabled = true;
  setStatus("Cannot train here.");
  window.dpoError = msg;
} else {
  const a = gpu.adapter;
  $("gpu-status").className = "notice info";
  $("gpu-status").textContent =
    `WebGPU adapter: ${[a.vendor, a.architecture, a.description].filter(Boolean).join(" ") || "available"}`;
  const params = new URLSearchParams(location.search);
  if (params.get("autorun") === "1") autorun(params);
  else refreshSaved();
}
window.dpoPageReady = true;
