//! The Hugging Face `tokenizer.json` and `tokenizer_config.json` transformers builds from a
//! GGUF file's vocabulary: byte-level BPE (`gpt2`) or sentencepiece BPE with byte fallback
//! (`llama`, merges recovered from the scores).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::reader::{GgufFile, MetaValue};
use crate::error::Result;

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable Latin-1 bytes stand for
/// themselves, the others are shifted past 255.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("Latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("BMP")
        };
    }
    table
}

const LLAMA3_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` value (`GGUF_PRE_TOKENIZER_SPLITS`);
/// any other value keeps GPT-2's ByteLevel pre-tokenizer.
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// The special token strings transformers names from the metadata (`bos_token` etc.).
fn special_tokens(file: &GgufFile, tokens: &[&str]) -> Result<Vec<(&'static str, Option<String>)>> {
    [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ]
    .into_iter()
    .map(|(name, key)| {
        let token = match file.meta_u64(key)? {
            None => None,
            Some(id) => Some(
                tokens
                    .get(id as usize)
                    .ok_or_else(|| {
                        file.meta_err(
                            key,
                            format!("id {id} is past the vocabulary ({})", tokens.len()),
                        )
                    })?
                    .to_string(),
            ),
        };
        Ok((name, token))
    })
    .collect()
}

fn tokens_of(file: &GgufFile) -> Result<Vec<&str>> {
    file.meta_strings("tokenizer.ggml.tokens")?.ok_or_else(|| {
        file.meta_err(
            "tokenizer.ggml.tokens",
            "missing from the GGUF metadata (no tokenizer)",
        )
    })
}

/// The two tokenizer kinds transformers builds from a `llama`-architecture GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenizerKind {
    /// `tokenizer.ggml.model = gpt2`: byte-level BPE (SmolLM2, Llama 3, Qwen2).
    ByteLevel,
    /// `tokenizer.ggml.model = llama`: sentencepiece BPE with byte fallback (TinyLlama, Llama 2).
    SentencePiece,
}

fn tokenizer_kind(file: &GgufFile) -> Result<TokenizerKind> {
    let key = "tokenizer.ggml.model";
    match file.meta_str(key)?.unwrap_or("") {
        "gpt2" => Ok(TokenizerKind::ByteLevel),
        "llama" => Ok(TokenizerKind::SentencePiece),
        other => Err(file.meta_err(
            key,
            format!(
                "tokenizer model `{other}` is not supported (only `gpt2`, byte-level BPE, and \
                 `llama`, sentencepiece BPE)"
            ),
        )),
    }
}

/// `tokenizer.ggml.token_type`, or nothing when the file has none.
fn token_types(file: &GgufFile) -> Result<Vec<i128>> {
    let key = "tokenizer.ggml.token_type";
    let Some(value) = file.meta(key) else {
        return Ok(Vec::new());
    };
    value
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|t| match t {
                    MetaValue::Int(i) => Some(*i),
                    _ => None,
                })
                .collect()
        })
        .ok_or_else(|| file.meta_err(key, "not an array of integers"))
}

/// The merges a sentencepiece vocabulary implies, as transformers recovers them when a file has
/// none (`tokenization_utils_base.generate_merges` with the scores): every split of a token into
/// two vocabulary tokens is a merge ranked by the whole token's score, ties broken by the pieces'
/// lengths (longer first), then by the vocabulary order. Python's stable sort is mirrored exactly,
/// because the order of the merges decides the tokenization.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<[String; 2]> {
    // `{token: index}`: a repeated token keeps its last index, as a Python dict does.
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    // `dict(zip(tokens, scores))`: first-seen order, last score.
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f64> = HashMap::new();
    for (&token, &score) in tokens.iter().zip(scores) {
        if score_of.insert(token, score).is_none() {
            order.push(token);
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| index.contains_key(l) && index.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|&(l, r, _)| (index[l], index[r]));
        merges.extend(local);
    }
    // `sorted(key=(score, len(left), len(right)), reverse=True)` keeps equal keys in order.
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| [l.to_string(), r.to_string()])
        .collect()
}

/// `tokenizer.json` as transformers (`integrations/gguf/gguf_tokenizer_mapping.py`) builds it:
/// * `gpt2`: `GPT2Tokenizer(vocab, merges)`, the split chosen by `tokenizer.ggml.pre`;
/// * `llama`: `LlamaTokenizer(vocab, merges)`: sentencepiece pieces as BPE with byte fallback,
///   `Metaspace` (prefix `▁` on the first word only), merges from the file or recovered from the
///   scores;
///
/// then control tokens added as special tokens and user-defined ones as plain added tokens, and a
/// post-processor adding BOS/EOS as `tokenizer.ggml.add_bos_token`/`add_eos_token` say (a
/// sentencepiece file without the flag gets BOS, as llama.cpp does).
pub(super) fn tokenizer_json(file: &GgufFile) -> Result<String> {
    let kind = tokenizer_kind(file)?;
    let tokens = tokens_of(file)?;
    let token_types = token_types(file)?;
    let merges_key = "tokenizer.ggml.merges";
    let file_merges = file
        .meta_strings(merges_key)?
        .map(|merges| {
            merges
                .iter()
                .map(|m| {
                    let mut parts = m.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => Ok([a.to_string(), b.to_string()]),
                        _ => {
                            Err(file.meta_err(merges_key, format!("merge {m:?} is not two tokens")))
                        }
                    }
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;

    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    for (id, &token) in tokens.iter().enumerate() {
        let spelled = if kind == TokenizerKind::SentencePiece || in_alphabet(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    let merges = match (kind, file_merges) {
        (_, Some(merges)) => merges,
        (TokenizerKind::ByteLevel, None) => {
            return Err(file.meta_err(merges_key, "missing (byte-level BPE needs merges)"));
        }
        (TokenizerKind::SentencePiece, None) => {
            let scores_key = "tokenizer.ggml.scores";
            let scores: Vec<f64> = file
                .meta(scores_key)
                .and_then(MetaValue::as_array)
                .and_then(|a| a.iter().map(MetaValue::as_f64).collect())
                .ok_or_else(|| {
                    file.meta_err(
                        scores_key,
                        "missing or not numbers (a sentencepiece vocabulary without merges \
                         needs its scores)",
                    )
                })?;
            if scores.len() != tokens.len() {
                return Err(file.meta_err(
                    scores_key,
                    format!("{} scores for {} tokens", scores.len(), tokens.len()),
                ));
            }
            merges_from_scores(&tokens, &scores)
        }
    };
    let merges: Vec<Value> = merges.into_iter().map(|m| json!(m)).collect();

    // Added tokens, keyed by id: (content, special).
    let mut added: std::collections::BTreeMap<u64, (String, bool)> = Default::default();
    for (&token, &ty) in tokens.iter().zip(&token_types) {
        let id = || vocab.get(token).and_then(Value::as_u64);
        // 3 = CONTROL: a special token, unless it is spelled outside the byte alphabet (a
        // llama.cpp mislabel that transformers skips).
        if ty == 3
            && (kind == TokenizerKind::SentencePiece || in_alphabet(token))
            && let Some(id) = id()
        {
            added.insert(id, (token.to_string(), true));
        }
        // 4 = USER_DEFINED: matched whole in text, but not special.
        if ty == 4
            && let Some(id) = id()
        {
            added.entry(id).or_insert((token.to_string(), false));
        }
    }
    // The named special tokens are special added tokens in transformers too.
    let specials = special_tokens(file, &tokens)?;
    for (_, token) in &specials {
        if let Some(token) = token
            && let Some(id) = vocab.get(token.as_str()).and_then(Value::as_u64)
        {
            added.entry(id).or_insert((token.clone(), true));
        }
    }
    let added_tokens: Vec<Value> = added
        .into_iter()
        .map(|(id, (content, special))| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special,
            })
        })
        .collect();

    let byte_level = |use_regex: bool| {
        json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": use_regex,
        })
    };
    let pre_tokenizer = match file
        .meta_str("tokenizer.ggml.pre")?
        .and_then(pre_tokenizer_split)
    {
        None if kind == TokenizerKind::SentencePiece => json!({
            "type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first",
            "split": false,
        }),
        None => byte_level(true),
        Some(split) => json!({
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated",
                    "invert": false,
                },
                byte_level(false),
            ],
        }),
    };

    let named = |n: &str| {
        specials
            .iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, t)| t.clone())
    };
    let (add_bos, add_eos) = add_bos_eos(file, kind)?;
    let bos = named("bos_token").filter(|_| add_bos);
    let eos = named("eos_token").filter(|_| add_eos);
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let sequence = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special_map = Map::new();
    if let Some(b) = &bos {
        single.push(special(b, 0));
    }
    single.push(sequence("A", 0));
    if let Some(e) = &eos {
        single.push(special(e, 0));
    }
    pair.extend(single.iter().cloned());
    if let Some(b) = &bos {
        pair.push(special(b, 1));
    }
    pair.push(sequence("B", 1));
    if let Some(e) = &eos {
        pair.push(special(e, 1));
    }
    for t in bos.iter().chain(eos.iter()) {
        let id = vocab.get(t.as_str()).cloned().unwrap_or(Value::Null);
        special_map.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }

    let (decoder, model) = match kind {
        TokenizerKind::ByteLevel => (
            json!({
                "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true,
            }),
            json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges,
            }),
        ),
        TokenizerKind::SentencePiece => (
            json!({
                "type": "Sequence",
                "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"},
                    {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0},
                ],
            }),
            json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges,
            }),
        ),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": special_map,
        },
        "decoder": decoder,
        "model": model,
    });
    Ok(serde_json::to_string(&tokenizer).expect("JSON serializes"))
}

/// Whether BOS and EOS are added: the file's flags; a sentencepiece file without a BOS flag gets
/// BOS (older files have none, and llama.cpp adds it).
fn add_bos_eos(file: &GgufFile, kind: TokenizerKind) -> Result<(bool, bool)> {
    let bos = file.meta_bool("tokenizer.ggml.add_bos_token")?;
    let eos = file.meta_bool("tokenizer.ggml.add_eos_token")?;
    Ok((
        bos.unwrap_or(kind == TokenizerKind::SentencePiece),
        eos.unwrap_or(false),
    ))
}

/// `tokenizer_config.json`: the special tokens, BOS/EOS flags and the chat template.
pub(super) fn tokenizer_config_json(file: &GgufFile) -> Result<String> {
    let tokens = tokens_of(file)?;
    let mut config = Map::new();
    for (name, token) in special_tokens(file, &tokens)? {
        if let Some(token) = token {
            config.insert(name.into(), json!(token));
        }
    }
    let (add_bos, add_eos) = add_bos_eos(file, tokenizer_kind(file)?)?;
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    if let Some(template) = file.meta_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    config.insert("tokenizer_class".into(), json!("TokenizersBackend"));
    Ok(serde_json::to_string_pretty(&Value::Object(config)).expect("JSON serializes"))
}
