//! Preference data: TRL's standard JSONL format, tokenized and collated exactly as TRL does.

use serde_json::Value;

use crate::error::{Error, Location, Result};
use crate::model::ScoringBatch;
use crate::model::attention::PaddingMask;
use crate::tokenizer::TextTokenizer;

/// One `{"prompt", "chosen", "rejected"}` row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// Parse JSONL text. `source` names the file in errors, which carry the 1-based line and field.
/// Blank lines are skipped.
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<PreferencePair>> {
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = || Location::file(source).line(line_no);
        let value: Value = serde_json::from_str(line)
            .map_err(|e| Error::input(at(), format!("invalid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| Error::input(at(), "expected a JSON object"))?;
        let field = |name: &str| -> Result<String> {
            match object.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Array(_)) => Err(Error::input(
                    at().field(name),
                    "conversational (list of messages) rows are not supported yet: \
                     give plain-text prompt/chosen/rejected",
                )),
                Some(other) => Err(Error::input(
                    at().field(name),
                    format!("expected a string, found {}", json_kind(other)),
                )),
                None => Err(Error::input(at().field(name), "missing")),
            }
        };
        pairs.push(PreferencePair {
            prompt: field("prompt")?,
            chosen: field("chosen")?,
            rejected: field("rejected")?,
        });
    }
    if pairs.is_empty() {
        return Err(Error::input(Location::file(source), "no preference pairs"));
    }
    Ok(pairs)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A pair after TRL's tokenization: the completions start where the tokenized prompt and
/// prompt+completion diverge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
}

/// Tokenized pairs plus how many rows TRL's `keep_start` filter dropped.
#[derive(Debug, Clone)]
pub struct TokenizedSet {
    pub pairs: Vec<TokenizedPair>,
    /// Pairs dropped because their prompt alone fills `max_length`.
    pub dropped: usize,
}

/// Tokenize as TRL's `DPOTrainer._prepare_dataset` does for plain text: EOS appended to each
/// completion unless already there; prompt, prompt+chosen and prompt+rejected tokenized
/// separately; the prompt is cut to the common prefix of all three; with `max_length`, pairs
/// whose prompt alone is at least `max_length` tokens are dropped.
pub fn tokenize_pairs(
    pairs: &[PreferencePair],
    tokenizer: &TextTokenizer,
    max_length: Option<usize>,
) -> Result<TokenizedSet> {
    let eos = &tokenizer.eos_token;
    let with_eos = |s: &str| {
        if s.ends_with(eos.as_str()) {
            s.to_string()
        } else {
            format!("{s}{eos}")
        }
    };
    let mut out = Vec::with_capacity(pairs.len());
    let mut dropped = 0;
    for pair in pairs {
        let prompt_ids = tokenizer.encode(&pair.prompt)?;
        let prompt_chosen =
            tokenizer.encode(&format!("{}{}", pair.prompt, with_eos(&pair.chosen)))?;
        let prompt_rejected =
            tokenizer.encode(&format!("{}{}", pair.prompt, with_eos(&pair.rejected)))?;
        let prompt_len = common_prefix(&prompt_ids, &prompt_chosen)
            .min(common_prefix(&prompt_ids, &prompt_rejected));
        if max_length.is_some_and(|max| prompt_len >= max) {
            dropped += 1;
            continue;
        }
        out.push(TokenizedPair {
            prompt_ids: prompt_ids[..prompt_len].to_vec(),
            chosen_ids: prompt_chosen[prompt_len..].to_vec(),
            rejected_ids: prompt_rejected[prompt_len..].to_vec(),
        });
    }
    Ok(TokenizedSet {
        pairs: out,
        dropped,
    })
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Collate pairs as TRL's `DataCollatorForPreference`: rows are all chosen sequences then all
/// rejected ones (2B rows), each `prompt + completion` cut to `max_length` keeping the start, right
/// padded to the longest row.
pub fn collate_pairs(
    pairs: &[&TokenizedPair],
    max_length: Option<usize>,
    pad_id: u32,
) -> ScoringBatch {
    let sequences: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (p.prompt_ids.as_slice(), p.chosen_ids.as_slice()))
        .chain(
            pairs
                .iter()
                .map(|p| (p.prompt_ids.as_slice(), p.rejected_ids.as_slice())),
        )
        .collect();
    collate(&sequences, max_length, pad_id)
}

/// Collate `(prompt, completion)` rows into one right-padded batch whose scored positions are the
/// completion tokens (after `keep_start` truncation).
pub fn collate(
    sequences: &[(&[u32], &[u32])],
    max_length: Option<usize>,
    pad_id: u32,
) -> ScoringBatch {
    let lengths: Vec<usize> = sequences
        .iter()
        .map(|(p, c)| {
            let len = p.len() + c.len();
            max_length.map_or(len, |m| len.min(m))
        })
        .collect();
    let rows = sequences.len();
    let seq_len = lengths.iter().copied().max().unwrap_or(0).max(1);
    let mut input_ids = vec![pad_id as i32; rows * seq_len];
    let mut is_pad = vec![true; rows * seq_len];
    let mut scored = Vec::new();
    for (row, ((prompt, completion), &len)) in sequences.iter().zip(&lengths).enumerate() {
        for (pos, &id) in prompt.iter().chain(completion.iter()).take(len).enumerate() {
            input_ids[row * seq_len + pos] = id as i32;
            is_pad[row * seq_len + pos] = false;
        }
        // Token at `pos` (a completion token, pos >= 1) is predicted from position pos - 1.
        for pos in prompt.len().max(1)..len {
            scored.push((row, pos - 1));
        }
    }
    ScoringBatch {
        rows,
        seq_len,
        input_ids,
        padding: PaddingMask {
            batch: rows,
            seq_len,
            is_pad,
        },
        scored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_errors_name_line_and_field() {
        let text = "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\n{\"prompt\":\"a\",\"chosen\":3,\"rejected\":\"c\"}\n";
        let err = parse_jsonl(text, "data.jsonl").unwrap_err().to_string();
        assert!(err.starts_with("data.jsonl:3 (field `chosen`)"), "{err}");
        let err = parse_jsonl("{\"prompt\":\"a\",\"chosen\":\"b\"}", "d.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.jsonl:1 (field `rejected`): missing"),
            "{err}"
        );
        let err = parse_jsonl("not json", "d.jsonl").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1: invalid JSON"), "{err}");
    }

    #[test]
    fn collation_matches_trl_docstring_example() {
        // The example in TRL's DataCollatorForPreference docstring.
        let a = TokenizedPair {
            prompt_ids: vec![1, 2, 3],
            chosen_ids: vec![4, 5],
            rejected_ids: vec![6],
        };
        let b = TokenizedPair {
            prompt_ids: vec![7, 8],
            chosen_ids: vec![9],
            rejected_ids: vec![10, 11],
        };
        let batch = collate_pairs(&[&a, &b], None, 0);
        assert_eq!(
            batch.input_ids,
            vec![1, 2, 3, 4, 5, 7, 8, 9, 0, 0, 1, 2, 3, 6, 0, 7, 8, 10, 11, 0]
        );
        // completion_mask [[0,0,0,1,1],[0,0,1,0,0],[0,0,0,1,0],[0,0,1,1,0]] shifted by one.
        assert_eq!(
            batch.scored,
            vec![(0, 2), (0, 3), (1, 1), (2, 2), (3, 1), (3, 2)]
        );
        let pads: Vec<bool> = batch.padding.is_pad.clone();
        assert_eq!(pads.iter().filter(|&&p| p).count(), 4);
    }

    #[test]
    fn keep_start_truncation_cuts_completions() {
        let a = TokenizedPair {
            prompt_ids: vec![1, 2, 3],
            chosen_ids: vec![4, 5, 6],
            rejected_ids: vec![7],
        };
        let batch = collate_pairs(&[&a], Some(4), 0);
        assert_eq!(batch.seq_len, 4);
        assert_eq!(batch.input_ids, vec![1, 2, 3, 4, 1, 2, 3, 7]);
        assert_eq!(batch.scored, vec![(0, 2), (1, 2)]);
    }
}
