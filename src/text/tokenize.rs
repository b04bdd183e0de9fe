//! Rows to token ids exactly as TRL tokenizes them (`DPOTrainer._prepare_dataset`,
//! `SFTTrainer`'s completion-only format).

use super::chat::{self, Message};
use super::rows::{Content, PreferencePair, SftExample};
use super::tokenizer::TextTokenizer;
use crate::error::Result;

/// A pair after TRL's tokenization: the completions start where the tokenized prompt and
/// prompt+completion diverge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
}

/// An SFT sequence: loss on `completion_ids` (all tokens when `prompt_ids` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedCompletion {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
}

/// Tokenized rows plus how many rows TRL's `keep_start` filter dropped.
#[derive(Debug, Clone)]
pub struct Tokenized<T> {
    pub rows: Vec<T>,
    /// Rows dropped because their prompt alone fills `max_length`.
    pub dropped: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn with_eos(text: &str, eos: &str) -> String {
    if text.ends_with(eos) {
        text.to_string()
    } else {
        format!("{text}{eos}")
    }
}

/// `(prompt ids, prompt+completion ids)` for each completion, as TRL tokenizes them: plain text
/// gets EOS appended and is tokenized with the post-processor's special tokens; conversations go
/// through the chat template (the prompt alone with the generation prompt).
fn tokenize_prompted(
    tokenizer: &TextTokenizer,
    prompt: &Content,
    completions: &[&Content],
) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
    match prompt {
        Content::Text(prompt) => {
            let full = completions
                .iter()
                .map(|c| match c {
                    Content::Text(c) => {
                        tokenizer.encode(&format!("{prompt}{}", with_eos(c, &tokenizer.eos_token)))
                    }
                    Content::Messages(_) => unreachable!("kinds checked when parsing"),
                })
                .collect::<Result<_>>()?;
            Ok((tokenizer.encode(prompt)?, full))
        }
        Content::Messages(prompt) => {
            let full = completions
                .iter()
                .map(|c| match c {
                    Content::Messages(c) => {
                        let conversation: Vec<Message> = prompt.iter().chain(c).cloned().collect();
                        chat::encode(tokenizer, &conversation, false)
                    }
                    Content::Text(_) => unreachable!("kinds checked when parsing"),
                })
                .collect::<Result<_>>()?;
            Ok((chat::encode(tokenizer, prompt, true)?, full))
        }
    }
}

/// Tokenize as TRL's `DPOTrainer._prepare_dataset` does: the prompt is cut to the common prefix of
/// it and both prompt+completions; with `max_length`, pairs whose prompt alone is at least
/// `max_length` tokens are dropped.
pub fn tokenize_pairs(
    pairs: &[PreferencePair],
    tokenizer: &TextTokenizer,
    max_length: Option<usize>,
) -> Result<Tokenized<TokenizedPair>> {
    let mut rows = Vec::with_capacity(pairs.len());
    let mut dropped = 0;
    for pair in pairs {
        let (prompt_ids, full) =
            tokenize_prompted(tokenizer, &pair.prompt, &[&pair.chosen, &pair.rejected])?;
        let (chosen, rejected) = (&full[0], &full[1]);
        let prompt_len =
            common_prefix(&prompt_ids, chosen).min(common_prefix(&prompt_ids, rejected));
        if max_length.is_some_and(|max| prompt_len >= max) {
            dropped += 1;
            continue;
        }
        rows.push(TokenizedPair {
            prompt_ids: prompt_ids[..prompt_len].to_vec(),
            chosen_ids: chosen[prompt_len..].to_vec(),
            rejected_ids: rejected[prompt_len..].to_vec(),
        });
    }
    Ok(Tokenized { rows, dropped })
}

/// Tokenize as TRL's `SFTTrainer`: prompt-completion rows score the completion (EOS appended to
/// plain text), `text` rows (EOS appended) and `messages` rows score every token. Sequences are
/// cut to `max_length` (keep_start) when collated, and rows left with no scored token are dropped.
pub fn tokenize_sft(
    examples: &[SftExample],
    tokenizer: &TextTokenizer,
    max_length: Option<usize>,
) -> Result<Tokenized<TokenizedCompletion>> {
    let all: Vec<TokenizedCompletion> = examples
        .iter()
        .map(|example| {
            Ok(match example {
                SftExample::PromptCompletion { prompt, completion } => {
                    let (prompt_ids, mut full) =
                        tokenize_prompted(tokenizer, prompt, &[completion])?;
                    let full = full.remove(0);
                    let prompt_len = common_prefix(&prompt_ids, &full);
                    TokenizedCompletion {
                        prompt_ids: full[..prompt_len].to_vec(),
                        completion_ids: full[prompt_len..].to_vec(),
                    }
                }
                SftExample::Messages { messages } => TokenizedCompletion {
                    prompt_ids: Vec::new(),
                    completion_ids: chat::encode(tokenizer, messages, false)?,
                },
                SftExample::Text { text } => TokenizedCompletion {
                    prompt_ids: Vec::new(),
                    completion_ids: tokenizer.encode(&with_eos(text, &tokenizer.eos_token))?,
                },
            })
        })
        .collect::<Result<_>>()?;
    // A row scores tokens at positions max(1, prompt)..min(len, max_length).
    let scores_something = |r: &TokenizedCompletion| {
        let end = r.prompt_ids.len() + r.completion_ids.len();
        let end = max_length.map_or(end, |m| end.min(m));
        r.prompt_ids.len().max(1) < end
    };
    let before = all.len();
    let rows: Vec<TokenizedCompletion> = all.into_iter().filter(scores_something).collect();
    Ok(Tokenized {
        dropped: before - rows.len(),
        rows,
    })
}
