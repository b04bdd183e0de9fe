/**
 * opfs-store.js — saved runs in the browser's Origin Private File System (OPFS), so a reload can
 * resume where training stopped. Used by worker.js (save, load) and dpo-trainer.js (list,
 * delete).
 *
 * Layout, under OPFS `dpo-wgpu/<name>/`:
 *   manifest.json          { version, name, step, totalSteps, savedAt, extra, slot, source }
 *                          written last: a save that is cut off leaves the previous one intact
 *   source-<n>/source.json how to rebuild the run: create options (data, settings, model texts),
 *                          model URLs, and which binary files hold weights (bin-<i>)
 *   source-<n>/bin-<i>     weights given as bytes (a model from disk, a round's start model)
 *   ckpt-a/, ckpt-b/       the checkpoint files (trainer.checkpoint()); saves alternate between
 *                          the two slots, so the one the manifest names is always complete
 * A file is replaced atomically by the browser when its writable stream closes.
 */

const ROOT = "dpo-wgpu";
const VERSION = 1;

/** A run's name: letters, digits, "-", "_", ".", 1 to 64 of them (it is a folder name). */
export function checkRunName(name) {
  const text = String(name ?? "");
  if (!/^[\w.-]{1,64}$/.test(text) || text === "." || text === "..") {
    throw new TypeError(
      `saved run name ${JSON.stringify(text)}: use 1 to 64 letters, digits, "-", "_" or "."`,
    );
  }
  return text;
}

/** A file name from a checkpoint ("best-model/config.json" has one folder): plain parts only. */
function checkFilePath(path) {
  const parts = String(path).split("/");
  if (parts.length > 2 || !parts.every((p) => /^[\w.-]+$/.test(p) && p !== "." && p !== "..")) {
    throw new Error(`refusing to store a file named ${JSON.stringify(path)}`);
  }
  return parts;
}

async function root(create) {
  if (!globalThis.navigator?.storage?.getDirectory) {
    throw new Error("this browser has no Origin Private File System (navigator.storage.getDirectory)");
  }
  const top = await navigator.storage.getDirectory();
  return top.getDirectoryHandle(ROOT, { create });
}

async function writeFile(dir, path, data) {
  const parts = checkFilePath(path);
  let folder = dir;
  for (const part of parts.slice(0, -1)) folder = await folder.getDirectoryHandle(part, { create: true });
  const handle = await folder.getFileHandle(parts[parts.length - 1], { create: true });
  const stream = await handle.createWritable();
  try {
    await stream.write(data);
    await stream.close();
  } catch (err) {
    await stream.abort().catch(() => {});
    throw err;
  }
}

async function readFile(dir, path, { text = false } = {}) {
  const parts = checkFilePath(path);
  let folder = dir;
  for (const part of parts.slice(0, -1)) folder = await folder.getDirectoryHandle(part);
  const file = await (await folder.getFileHandle(parts[parts.length - 1])).getFile();
  return text ? file.text() : new Uint8Array(await file.arrayBuffer());
}

/** Every file under `dir` as { "sub/name": Uint8Array }. */
async function readTree(dir, prefix = "") {
  const out = {};
  for await (const [name, handle] of dir.entries()) {
    if (handle.kind === "file") {
      out[prefix + name] = new Uint8Array(await (await handle.getFile()).arrayBuffer());
    } else {
      Object.assign(out, await readTree(handle, `${prefix}${name}/`));
    }
  }
  return out;
}

async function removeEntry(dir, name) {
  await dir.removeEntry(name, { recursive: true }).catch((err) => {
    if (err?.name !== "NotFoundError") throw err;
  });
}

async function readManifest(dir) {
  try {
    return JSON.parse(await readFile(dir, "manifest.json", { text: true }));
  } catch (err) {
    if (err?.name === "NotFoundError") return null;
    throw err;
  }
}

/** Splits the binary parts (Uint8Array, or { name: Uint8Array }) of a run's source from its JSON. */
function splitSource(source) {
  const binaries = [];
  const json = {};
  for (const [key, value] of Object.entries(source)) {
    if (value instanceof Uint8Array) {
      binaries.push({ key, name: null, bytes: value });
    } else if (value && typeof value === "object" && Object.values(value).some((v) => v instanceof Uint8Array)) {
      for (const [name, bytes] of Object.entries(value)) binaries.push({ key, name, bytes });
    } else {
      json[key] = value;
    }
  }
  return { json, binaries };
}

/**
 * Saves a run: `source` (how to rebuild it, see worker.js), written once per `sourceId`;
 * `checkpoint` files; `info` ({ stepsDone, totalSteps }); `extra` (anything JSON: the page's
 * settings, collected preferences). Returns the manifest.
 */
export async function saveRun(name, { source, sourceId, checkpoint, info, extra }) {
  const dir = await (await root(true)).getDirectoryHandle(checkRunName(name), { create: true });
  const previous = await readManifest(dir);
  const sourceDir = `source-${sourceId}`;
  if (previous?.source !== sourceDir) {
    await removeEntry(dir, sourceDir); // a half-written copy of an earlier try
    const { json, binaries } = splitSource(source);
    const folder = await dir.getDirectoryHandle(sourceDir, { create: true });
    const files = [];
    for (const [i, { key, name: fileName, bytes }] of binaries.entries()) {
      await writeFile(folder, `bin-${i}`, bytes);
      files.push({ key, name: fileName, file: `bin-${i}` });
    }
    await writeFile(folder, "source.json", JSON.stringify({ ...json, files }));
  }
  const slot = previous?.slot === "ckpt-a" ? "ckpt-b" : "ckpt-a";
  await removeEntry(dir, slot);
  const slotDir = await dir.getDirectoryHandle(slot, { create: true });
  for (const [file, bytes] of Object.entries(checkpoint)) await writeFile(slotDir, file, bytes);
  const manifest = {
    version: VERSION,
    name,
    step: info.stepsDone,
    totalSteps: info.totalSteps,
    savedAt: new Date().toISOString(),
    extra: extra ?? null,
    slot,
    source: sourceDir,
  };
  await writeFile(dir, "manifest.json", JSON.stringify(manifest));
  // Only now is the older slot (and an older source) unneeded.
  const stale = [];
  for await (const [entry] of dir.entries()) {
    if (entry !== slot && entry !== sourceDir && entry !== "manifest.json") stale.push(entry);
  }
  for (const entry of stale) await removeEntry(dir, entry);
  return publicInfo(manifest);
}

function publicInfo(manifest) {
  const { name, step, totalSteps, savedAt, extra } = manifest;
  return { name, step, totalSteps, savedAt, extra };
}

/** { source, checkpoint, manifest } of a saved run (source as saveRun was given it). */
export async function loadRun(name) {
  const top = await root(false).catch(() => null);
  const dir = top && (await top.getDirectoryHandle(checkRunName(name)).catch(() => null));
  const manifest = dir && (await readManifest(dir));
  if (!manifest) throw new Error(`no saved run named ${JSON.stringify(name)} in this browser`);
  if (manifest.version !== VERSION) {
    throw new Error(`saved run ${JSON.stringify(name)} has format version ${manifest.version}, not ${VERSION}`);
  }
  const sourceDir = await dir.getDirectoryHandle(manifest.source);
  const { files, ...source } = JSON.parse(await readFile(sourceDir, "source.json", { text: true }));
  for (const { key, name: fileName, file } of files) {
    const bytes = await readFile(sourceDir, file);
    if (fileName == null) source[key] = bytes;
    else source[key] = { ...(source[key] ?? {}), [fileName]: bytes };
  }
  const checkpoint = await readTree(await dir.getDirectoryHandle(manifest.slot));
  return { source, checkpoint, manifest: publicInfo(manifest) };
}

/** The saved runs, newest first: [{ name, step, totalSteps, savedAt, extra }]. */
export async function listRuns() {
  const top = await root(false).catch(() => null);
  if (!top) return [];
  const out = [];
  for await (const [, handle] of top.entries()) {
    if (handle.kind !== "directory") continue;
    const manifest = await readManifest(handle).catch(() => null);
    if (manifest?.version === VERSION) out.push(publicInfo(manifest));
  }
  return out.sort((a, b) => b.savedAt.localeCompare(a.savedAt));
}

export async function deleteRun(name) {
  const top = await root(false).catch(() => null);
  if (top) await removeEntry(top, checkRunName(name));
}
