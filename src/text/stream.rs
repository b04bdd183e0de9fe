//! Generated tokens as text: streamed deltas, and the one generation call both shells use
//! (the CLI prints deltas, the page hands them to JavaScript).

use web_time::Instant;

use burn::tensor::Device;

use crate::error::Result;
use crate::model::CausalLm;
use crate::model::generate::{SamplingOptions, generate};
use crate::text::chat::{self, Message};
use crate::text::tokenizer::TextTokenizer;

/// What to continue: plain text, or a user message (after an optional system message) rendered
/// with the model's chat template and its generation prompt.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    pub text: String,
    pub chat: bool,
    pub system: Option<String>,
}

impl Prompt {
    pub fn ids(&self, tokenizer: &TextTokenizer) -> Result<Vec<u32>> {
        if !self.chat {
            return tokenizer.encode(&self.text);
        }
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &self.text));
        chat::encode(tokenizer, &messages, true)
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    pub prompt_tokens: usize,
    /// New token ids, a stop token that ended generation included.
    pub new_tokens: Vec<u32>,
    /// The full decode of `new_tokens` without special tokens (see [`TextStream`]).
    pub text: String,
    /// Text the stream still held back at the end (a trailing incomplete character).
    pub tail: String,
    pub seconds: f64,
    /// Seconds until the first new token (the prompt's forward pass included).
    pub first_token_seconds: Option<f64>,
}

impl Generated {
    /// New tokens per second after the first one (prefill excluded).
    pub fn decode_tokens_per_second(&self) -> f64 {
        let prefill = self.first_token_seconds.unwrap_or(self.seconds);
        self.new_tokens.len().saturating_sub(1) as f64 / (self.seconds - prefill).max(1e-9)
    }
}

/// Continue `prompt` with `model`, calling `on_delta(text, token)` once per new token in order
/// (`text` may be empty while a character is incomplete); it returns `false` to stop after that
/// token.
pub async fn generate_text(
    model: &CausalLm,
    tokenizer: &TextTokenizer,
    prompt: &Prompt,
    stop_tokens: &[u32],
    options: &SamplingOptions,
    device: &Device,
    mut on_delta: impl FnMut(&str, u32) -> bool,
) -> Result<Generated> {
    let prompt_ids = prompt.ids(tokenizer)?;
    let mut stream = TextStream::new(tokenizer);
    let started = Instant::now();
    let mut first_token = None;
    let new_tokens = generate(model, &prompt_ids, stop_tokens, options, device, |token| {
        first_token.get_or_insert_with(|| started.elapsed().as_secs_f64());
        match stream.push(token) {
            Ok(delta) => on_delta(&delta, token),
            Err(_) => true,
        }
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let tail = stream.finish().unwrap_or_default();
    Ok(Generated {
        prompt_tokens: prompt_ids.len(),
        text: tokenizer.decode_skipping_special(&new_tokens)?,
        new_tokens,
        tail,
        seconds,
        first_token_seconds: first_token,
    })
}

/// Turns a growing list of token ids into text deltas, holding back a possibly incomplete UTF-8
/// sequence (byte-level BPE and byte fallback split characters across tokens).
///
/// The deltas join to the decoded text, except in one case no stream can undo: with sentencepiece
/// byte fallback, a byte token that follows a complete character can turn the whole byte run
/// into invalid UTF-8 (`�` per byte), rewriting text already emitted; the stream then goes on
/// after it. Use the full decode of the ids, not the joined deltas, as the final text.
pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    emitted: String,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a TextTokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: String::new(),
        }
    }

    /// The new text that `token` completes (possibly empty).
    pub fn push(&mut self, token: u32) -> Result<String> {
        self.ids.push(token);
        let text = self.tokenizer.decode_skipping_special(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        Ok(self.advance(text))
    }

    /// What is still held back (a trailing `�` at the end of generation).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tokenizer.decode_skipping_special(&self.ids)?;
        Ok(self.advance(text))
    }

    fn advance(&mut self, text: String) -> String {
        let delta = match text.strip_prefix(self.emitted.as_str()) {
            Some(new) => new.to_string(),
            None => {
                // The tail was rewritten: continue after as much as was emitted.
                let mut at = self.emitted.len().min(text.len());
                while !text.is_char_boundary(at) {
                    at += 1;
                }
                text[at..].to_string()
            }
        };
        self.emitted = text;
        delta
    }
}
