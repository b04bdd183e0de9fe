//! Tokenized rows to batches, as TRL's collators build them: prompt + completion cut to
//! `max_length` keeping the start, right-padded, with the completion positions scored.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::tokenize::{SplitPair, TokenizedCompletion, TokenizedPair};
use crate::error::Error;
use crate::model::attention::PaddingMask;
use crate::model::scoring::ScoringBatch;

/// Which end of a sequence longer than `max_length` is kept (TRL's `truncation_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum TruncationMode {
    /// Cut the end (TRL's default); DPO drops pairs whose prompt alone fills `max_length`.
    #[default]
    KeepStart,
    /// Cut the beginning of prompt + completion (deprecated in TRL, kept for its users).
    KeepEnd,
}

impl FromStr for TruncationMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "keep_start" => Ok(Self::KeepStart),
            "keep_end" => Ok(Self::KeepEnd),
            other => Err(Error::setting(
                "truncation_mode",
                format!("unknown truncation mode `{other}` (keep_start or keep_end)"),
            )),
        }
    }
}

impl TryFrom<String> for TruncationMode {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

/// Collate pairs as TRL's `DataCollatorForPreference`: rows are all chosen sequences then all
/// rejected ones (2B rows), each `prompt + completion` cut to `max_length` keeping the start, right
/// padded to the longest row.
pub fn collate_pairs(
    pairs: &[&TokenizedPair],
    max_length: Option<usize>,
    truncation: TruncationMode,
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
    collate(&sequences, max_length, truncation, pad_id)
}

/// Collate pairs tokenized per answer (CPO/ORPO) as `DPODataCollatorWithPadding` +
/// `concatenated_inputs` do: all chosen rows, then all rejected rows, right padded.
pub fn collate_split_pairs(
    pairs: &[&SplitPair],
    max_length: Option<usize>,
    pad_id: u32,
) -> ScoringBatch {
    let rows: Vec<&TokenizedCompletion> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    collate_completions(&rows, max_length, TruncationMode::KeepStart, pad_id)
}

/// Collate SFT sequences.
pub fn collate_completions(
    rows: &[&TokenizedCompletion],
    max_length: Option<usize>,
    truncation: TruncationMode,
    pad_id: u32,
) -> ScoringBatch {
    let sequences: Vec<(&[u32], &[u32])> = rows
        .iter()
        .map(|r| (r.prompt_ids.as_slice(), r.completion_ids.as_slice()))
        .collect();
    collate(&sequences, max_length, truncation, pad_id)
}

/// Collate `(prompt, completion)` rows into one right-padded batch whose scored positions are the
/// completion tokens left after truncation to `max_length`.
pub fn collate(
    sequences: &[(&[u32], &[u32])],
    max_length: Option<usize>,
    truncation: TruncationMode,
    pad_id: u32,
) -> ScoringBatch {
    // keep_end drops tokens from the front: first the prompt's, then the completion's.
    let kept: Vec<(&[u32], &[u32])> = sequences
        .iter()
        .map(|&(prompt, completion)| {
            let len = prompt.len() + completion.len();
            match (truncation, max_length) {
                (TruncationMode::KeepEnd, Some(max)) if len > max => {
                    let cut = len - max;
                    if cut <= prompt.len() {
                        (&prompt[cut..], completion)
                    } else {
                        (&prompt[..0], &completion[cut - prompt.len()..])
                    }
                }
                _ => (prompt, completion),
            }
        })
        .collect();
    let sequences = &kept;
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
        completion_tokens: sequences
            .iter()
            .zip(&lengths)
            .map(|((prompt, _), &len)| len.saturating_sub(prompt.len()))
            .collect(),
        scored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tokenize::TokenizedPair;

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
        let batch = collate_pairs(&[&a, &b], None, TruncationMode::KeepStart, 0);
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
        let batch = collate_pairs(&[&a], Some(4), TruncationMode::KeepStart, 0);
        assert_eq!(batch.seq_len, 4);
        assert_eq!(batch.input_ids, vec![1, 2, 3, 4, 1, 2, 3, 7]);
        assert_eq!(batch.scored, vec![(0, 2), (1, 2)]);
    }
}
