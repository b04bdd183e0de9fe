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

/// A pair as TRL's CPO and ORPO trainers tokenize it (the pre-1.0 DPO tokenization they kept):
/// each answer is `prompt + answer` with its own prompt split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPair {
    pub chosen: TokenizedCompletion,
    pub rejected: TokenizedCompletion,
}

fn char_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// `(prompt, chosen, rejected)` as text: conversations rendered as TRL's
/// `maybe_apply_chat_template` does (the prompt is the rendered prompt's common prefix with both
/// rendered conversations; each answer is what follows it).
fn pair_texts(
    tokenizer: &TextTokenizer,
    pair: &PreferencePair,
) -> Result<(String, String, String)> {
    match (&pair.prompt, &pair.chosen, &pair.rejected) {
        (Content::Text(p), Content::Text(c), Content::Text(r)) => {
            Ok((p.clone(), c.clone(), r.clone()))
        }
        (Content::Messages(p), Content::Messages(c), Content::Messages(r)) => {
            let mut prompt = chat::render(tokenizer, p, true)?;
            let conversation = |answer: &[Message]| {
                let all: Vec<Message> = p.iter().chain(answer).cloned().collect();
                chat::render(tokenizer, &all, false)
            };
            let (chosen, rejected) = (conversation(c)?, conversation(r)?);
            prompt.truncate(char_prefix_len(&prompt, &chosen));
            prompt.truncate(char_prefix_len(&prompt, &rejected));
            let (c, r) = (
                chosen[prompt.len()..].to_string(),
                rejected[prompt.len()..].to_string(),
            );
            Ok((prompt, c, r))
        }
        _ => unreachable!("kinds checked when parsing"),
    }
}

/// One answer as `build_tokenized_answer`: `enc(prompt + answer)` split where `enc(prompt)` ends,
/// one token earlier when the tokenizer merged across the boundary.
fn split_answer(
    tokenizer: &TextTokenizer,
    prompt: &str,
    answer: &str,
) -> Result<TokenizedCompletion> {
    let full = tokenizer.encode_with(&format!("{prompt}{answer}"), false)?;
    let prompt_ids = tokenizer.encode_with(prompt, false)?;
    let mut start = prompt_ids.len().min(full.len());
    if full[..start] != prompt_ids[..] {
        start = start.saturating_sub(1);
    }
    Ok(TokenizedCompletion {
        prompt_ids: full[..start].to_vec(),
        completion_ids: full[start..].to_vec(),
    })
}

/// Tokenize as TRL's `CPOTrainer`/`ORPOTrainer.tokenize_row`: each answer split from its prompt
/// as `build_tokenized_answer` does, BOS put before each prompt and EOS after each answer unless
/// already there, answers cut so that prompt + answer fits `max_length`. TRL keeps a pair whose
/// prompt alone fills `max_length` with an empty answer (a NaN mean log-prob); it is dropped here.
pub fn tokenize_split_pairs(
    pairs: &[PreferencePair],
    tokenizer: &TextTokenizer,
    max_length: Option<usize>,
) -> Result<Tokenized<SplitPair>> {
    let bos = tokenizer.bos_id();
    let mut rows = Vec::with_capacity(pairs.len());
    let mut dropped = 0;
    for pair in pairs {
        let (prompt, chosen, rejected) = pair_texts(tokenizer, pair)?;
        let mut answers = [
            split_answer(tokenizer, &prompt, &chosen)?,
            split_answer(tokenizer, &prompt, &rejected)?,
        ];
        let mut fits = true;
        for answer in &mut answers {
            if let Some(bos) = bos
                && answer.prompt_ids.first() != Some(&bos)
            {
                answer.prompt_ids.insert(0, bos);
            }
            if answer.completion_ids.last() != Some(&tokenizer.eos_id) {
                answer.completion_ids.push(tokenizer.eos_id);
            }
            if let Some(max) = max_length {
                let room = max.saturating_sub(answer.prompt_ids.len());
                answer.completion_ids.truncate(room);
            }
            fits &= !answer.completion_ids.is_empty();
        }
        if !fits {
            dropped += 1;
            continue;
        }
        let [chosen, rejected] = answers;
        rows.push(SplitPair { chosen, rejected });
    }
    Ok(Tokenized { rows, dropped })
}
