//! Fuzz targets: the parsers that read untrusted bytes, each a function that must return (an
//! error is fine) and never panic, whatever the input. Driven by AFL++ (`fuzz/`, see its README)
//! and, in every test run, by `tests/fuzz.rs`, which replays the committed corpora and a few
//! thousand mutations of them.

use crate::io::gguf::{GgufFile, model_texts_and_weights};
use crate::io::model_dir::shard_names;
use crate::io::safetensors::{FileBytes, SafetensorsSource};
use crate::model::weights::WeightSource;
use crate::text::chat::{Message, render};
use crate::text::rows::Jsonl;
use crate::text::tokenizer::TextTokenizer;

/// A fuzz target: must return for any input.
pub type Target = fn(&[u8]);

/// The targets by name (the name of their corpus folder under `fuzz/corpus/`).
pub const TARGETS: [(&str, Target); 5] = [
    ("jsonl", jsonl),
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("gguf_tokenizer", gguf_tokenizer),
    ("chat_template", chat_template),
];

/// JSONL rows of both tasks, and a shard index, from any bytes.
pub fn jsonl(data: &[u8]) {
    if let Ok(jsonl) = Jsonl::from_bytes("fuzz.jsonl", data.to_vec()) {
        let _ = jsonl.pairs();
        let _ = jsonl.sft_examples();
        let _ = shard_names(&jsonl.text, "fuzz.index.json");
    }
}

/// The GGUF container: header, metadata, tensor table, and every tensor dequantized.
pub fn gguf(data: &[u8]) {
    if let Ok(file) = GgufFile::parse("fuzz.gguf", FileBytes::Owned(data.to_vec())) {
        for tensor in &file.tensors {
            // Bounded: the reader checked each extent against the file. Whatever it accepts
            // dequantizes to exactly the elements its shape promises.
            if let Ok(host) = file.dequantize(tensor) {
                assert_eq!(host.data.len(), tensor.elements(), "{}", tensor.name);
            }
        }
    }
}

/// A safetensors file: header, then every tensor converted to f32.
pub fn safetensors(data: &[u8]) {
    let Ok(source) = SafetensorsSource::new(
        "fuzz",
        vec![("fuzz".into(), FileBytes::Owned(data.to_vec()))],
    ) else {
        return;
    };
    let names: Vec<String> = source.names().map(str::to_string).collect();
    for name in names {
        let _ = source.read(&name);
    }
}

/// The config, `tokenizer.json` and `tokenizer_config.json` built from a GGUF file's metadata,
/// then loaded as the tokenizer training uses, which encodes and decodes a sentence.
pub fn gguf_tokenizer(data: &[u8]) {
    let Ok((texts, _)) = model_texts_and_weights("fuzz.gguf", FileBytes::Owned(data.to_vec()))
    else {
        return;
    };
    let Ok(tokenizer) = TextTokenizer::from_json(
        texts.tokenizer_json,
        texts.tokenizer_config_json,
        None,
        "fuzz.gguf",
    ) else {
        return;
    };
    if let Ok(ids) = tokenizer.encode("Hello world, héllo 世界!") {
        let _ = tokenizer.decode(&ids);
    }
}

/// A chat template (the bytes, as text) rendered as transformers would, with a system, a user
/// and an assistant message, with and without the generation prompt.
pub fn chat_template(data: &[u8]) {
    let Ok(template) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut tokenizer) =
        TextTokenizer::from_json(TOKENIZER.into(), None, Some(0), "fuzz tokenizer")
    else {
        return;
    };
    tokenizer.chat_template = Some(template.to_string());
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi {{ there }} {% raw %}"),
        Message::new("assistant", "Hello."),
    ];
    for add_generation_prompt in [false, true] {
        let _ = render(&tokenizer, &messages, add_generation_prompt);
    }
}

/// A word-level tokenizer of two tokens, for rendering templates.
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<eos>":0,"<unk>":1},"unk_token":"<unk>"}}"#;
