/**
 * model-source.js — where a model's files come from, for the browser: the file list of a Hugging
 * Face model folder, `hf:` references, `.gguf` detection, the shards of a sharded checkpoint, and
 * fetching all of it. Used by dpo-trainer.js (on the page, to resolve `modelUrl` early) and by
 * worker.js (which downloads). The Rust side has the same list and parser
 * (src/io/model_dir.rs, src/io/hub_ref.rs) and exports them as `modelLayout()` / `hubUrl()`;
 * tests/browser/run.mjs checks that the two agree.
 */

/** The files of a model folder: texts that must exist, texts used when present, the weights. */
export const MODEL_LAYOUT = Object.freeze({
  required: ["config.json", "tokenizer.json"],
  optional: ["tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja"],
  weights: "model.safetensors",
  weightsIndex: "model.safetensors.index.json",
});

/** The Hub that `hf:` references point at. */
export const HUB_ENDPOINT = "https://huggingface.co";

/** Thrown by a `download` function for an HTTP 404 (the file does not exist). */
export class NotFound extends Error {}

/**
 * The key of a text file in the wasm `Trainer.create` options' `model` object:
 * "tokenizer_config.json" -> "tokenizerConfig", "chat_template.jinja" -> "chatTemplate".
 */
export function optionKey(fileName) {
  return fileName.replace(/\.[^.]+$/, "").replace(/_(\w)/g, (_, c) => c.toUpperCase());
}

/** Whether a URL (or path) names a single GGUF file. */
export function isGguf(url) {
  return /\.gguf$/i.test(new URL(url, "http://x/").pathname);
}

/**
 * The URL a `modelUrl` option downloads from: "hf:OWNER/NAME[/PATH][@REVISION]" becomes
 * https://huggingface.co/OWNER/NAME/resolve/REVISION/[PATH] (REVISION: main; a PATH not ending in
 * .gguf is a folder), a folder gets a trailing "/", a relative URL resolves against `base`.
 * @param {string} modelUrl
 * @param {string} base
 * @returns {string}
 */
export function resolveModelUrl(modelUrl, base) {
  const spec = String(modelUrl).trim();
  let url;
  if (/^hf:/i.test(spec)) {
    // As the CLI reads it: everything after the first "@" is the revision.
    const at = spec.indexOf("@");
    const where = at < 0 ? spec.slice(3) : spec.slice(3, at);
    const revision = at < 0 ? "main" : spec.slice(at + 1);
    const parts = where.split("/").filter(Boolean);
    const plain = (p) => /^[\w.-]+$/.test(p) && p !== "." && p !== "..";
    if (parts.length < 2 || !revision || !parts.every(plain)) {
      throw new TypeError(
        `modelUrl ${JSON.stringify(spec)}: expected "hf:OWNER/NAME[@REVISION]" or "hf:OWNER/NAME/FILE.gguf[@REVISION]"`,
      );
    }
    const [owner, name, ...sub] = parts;
    let rev;
    try {
      rev = encodeURIComponent(decodeURIComponent(revision));
    } catch {
      rev = encodeURIComponent(revision);
    }
    url = `${HUB_ENDPOINT}/${owner}/${name}/resolve/${rev}/${sub.join("/")}`;
  } else {
    url = new URL(spec, base).href;
  }
  if (!isGguf(url) && !url.endsWith("/")) {
    const parsed = new URL(url);
    parsed.pathname += "/";
    url = parsed.href;
  }
  return url;
}

/**
 * The shard files a `model.safetensors.index.json` lists (each once, sorted).
 * @param {string} indexText the index file's text
 * @param {string} indexUrl names the index in errors
 */
export function shardNames(indexText, indexUrl) {
  let map;
  try {
    map = JSON.parse(indexText).weight_map;
  } catch (err) {
    throw new Error(`${indexUrl}: not valid JSON (${err?.message ?? err})`);
  }
  const names = [...new Set(Object.values(map ?? {}))].sort();
  if (names.length === 0) throw new Error(`${indexUrl} lists no weight files (empty weight_map)`);
  for (const name of names) {
    if (!isPlainFileName(name)) {
      throw new Error(
        `${indexUrl}: shard ${JSON.stringify(name)} is not a plain file name inside the model folder (no paths, no "..")`,
      );
    }
  }
  return names;
}

/** A name that stays inside a folder when joined to it (the Rust side's `is_plain_file_name`). */
export function isPlainFileName(name) {
  return (
    typeof name === "string" &&
    name.length > 0 &&
    name.length <= 255 &&
    !name.startsWith(".") &&
    !/[\/\\:%?#\u0000-\u001f\u007f-\u009f]/.test(name)
  );
}

/**
 * Fetches a model from `url` (already resolved): a `.gguf` file (-> { weights }), or a Hugging
 * Face model folder (-> { model: texts by option key, weights: model.safetensors bytes, or
 * { shardName: bytes } for a checkpoint sharded over the files the index lists }).
 * `download(url, fileName, { text })` returns bytes (or text) and throws NotFound on a 404.
 */
export async function fetchModel(url, download) {
  if (isGguf(url)) {
    try {
      return { weights: await download(url, decodeURIComponent(new URL(url).pathname.split("/").pop())) };
    } catch (err) {
      if (err instanceof NotFound) throw new Error(`model file not found: ${url} (404)`);
      throw err;
    }
  }
  const dir = url.endsWith("/") ? url : `${url}/`;
  const at = (name) => new URL(name, dir).href;
  const text = (name) => download(at(name), name, { text: true });
  const optional = async (promise) => {
    try {
      return await promise;
    } catch (err) {
      if (err instanceof NotFound) return null;
      throw err;
    }
  };
  const required = async (name) => {
    try {
      return await text(name);
    } catch (err) {
      if (err instanceof NotFound) {
        throw new Error(`${name} not found at ${at(name)} (404): modelUrl must be a Hugging Face model folder`);
      }
      throw err;
    }
  };
  // In parallel; on failure, the first file's error in this order (not the first to arrive).
  const names = [...MODEL_LAYOUT.required, ...MODEL_LAYOUT.optional];
  const settled = await Promise.allSettled(
    names.map((name) => (MODEL_LAYOUT.required.includes(name) ? required(name) : optional(text(name)))),
  );
  const failed = settled.find((s) => s.status === "rejected");
  if (failed) throw failed.reason;
  const model = {};
  names.forEach((name, i) => {
    if (settled[i].value != null) model[optionKey(name)] = settled[i].value;
  });

  let weights = await optional(download(at(MODEL_LAYOUT.weights), MODEL_LAYOUT.weights));
  if (weights == null) {
    const indexText = await optional(text(MODEL_LAYOUT.weightsIndex));
    if (indexText == null) {
      throw new Error(
        `no weights at ${dir}: neither ${MODEL_LAYOUT.weights} nor ${MODEL_LAYOUT.weightsIndex} exists ` +
          "(404); a .gguf file URL also works as modelUrl",
      );
    }
    const shards = shardNames(indexText, at(MODEL_LAYOUT.weightsIndex));
    // One file, or every shard (in parallel) as { fileName: bytes } for the wasm to index.
    const fetchShard = async (name) => {
      try {
        return await download(at(name), name);
      } catch (err) {
        if (err instanceof NotFound) {
          throw new Error(`${name} (named in ${MODEL_LAYOUT.weightsIndex}) not found at ${at(name)} (404)`);
        }
        throw err;
      }
    };
    if (shards.length === 1) {
      weights = await fetchShard(shards[0]);
    } else {
      const settledShards = await Promise.allSettled(shards.map(fetchShard));
      const failedShard = settledShards.find((s) => s.status === "rejected");
      if (failedShard) throw failedShard.reason;
      weights = Object.fromEntries(shards.map((name, i) => [name, settledShards[i].value]));
    }
  }
  return { model, weights };
}

/**
 * The same model read from local files (a file picker or drag-and-drop: one `.gguf`, or the files
 * of a Hugging Face folder, sharded or not), by their names. Returns what fetchModel returns.
 * `read(file, name, { text })` reads one File (the caller reports progress).
 * @param {File[]} files
 */
export async function modelFromFiles(files, read) {
  const byName = new Map();
  for (const file of files) byName.set(file.name, file);
  const ggufs = [...byName.keys()].filter((name) => isGguf(name));
  if (ggufs.length > 1) {
    throw new Error(`choose one .gguf file, not ${ggufs.length} (${ggufs.join(", ")})`);
  }
  if (files.length === 0) throw new Error("no model files were chosen");
  const base = "file:///model/";
  const url = ggufs.length === 1 ? base + encodeURIComponent(ggufs[0]) : base;
  return fetchModel(url, async (fileUrl, name, opts) => {
    const file = byName.get(name);
    if (!file) {
      if (MODEL_LAYOUT.required.includes(name)) {
        throw new Error(
          `${name} is missing among the chosen files (${[...byName.keys()].join(", ")}): choose ` +
            "one .gguf file, or every file of a Hugging Face model folder",
        );
      }
      throw new NotFound(`${name}: not among the chosen files`);
    }
    return read(file, name, opts ?? {});
  });
}
