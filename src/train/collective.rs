//! Data-parallel training: several processes ("ranks"), each with its own device, train one model
//! as one process would. Every rank holds the same weights, optimizer state and data order; each
//! global batch is split between the ranks (`shard`), and what they computed is summed across
//! them (`Collective::sum`) before anyone uses it, so every rank takes the same step.
//!
//! This file is the core's side of it and knows no transport: the CLI implements `Collective`
//! over MPI (`cli/mpi.rs`, cargo feature `mpi`); without a group, nothing here runs.

use crate::error::{Error, Result};

/// The processes of one data-parallel job and the operations the trainer needs from them. Every
/// rank must make the same calls in the same order (they block until all ranks make them).
pub trait Collective {
    /// This process's index, `0..size()`. Rank 0 is the one that writes files.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn size(&self) -> usize;
    /// Element-wise sum over all ranks, in place; every rank ends with the same values.
    fn sum(&self, values: &mut [f32]) -> Result<()>;
    /// Every rank's `value`, in rank order.
    fn gather(&self, value: u64) -> Result<Vec<u64>>;
}

/// Rank `rank`'s share of `indices` (one global batch), whose examples cost `costs` (their
/// tokens): consecutive runs of about equal cost, so that no rank waits long for another at the
/// exchange. Every rank computes the same cut. A rank may get none (a batch smaller than the
/// group, or one long example).
pub fn shard<'a>(indices: &'a [usize], costs: &[usize], rank: usize, size: usize) -> &'a [usize] {
    debug_assert_eq!(indices.len(), costs.len());
    let mut prefix = vec![0usize; costs.len() + 1];
    for (k, c) in costs.iter().enumerate() {
        // Each example costs at least 1, so that examples of no cost still spread out.
        prefix[k + 1] = prefix[k] + c.max(&1);
    }
    let total = prefix[costs.len()] as f64;
    // Cut k falls at the prefix nearest to k/size of the total (never before the cut before it).
    let cut = |k: usize| -> usize {
        if k == 0 {
            return 0;
        }
        if k >= size {
            return indices.len();
        }
        let target = total * k as f64 / size as f64;
        (0..=indices.len())
            .min_by(|&a, &b| {
                let d = |j: usize| (prefix[j] as f64 - target).abs();
                d(a).total_cmp(&d(b))
            })
            .expect("at least the empty prefix")
    };
    let (start, end) = (cut(rank), cut(rank + 1));
    &indices[start.min(end)..end]
}

/// Fail unless every rank reports the same `value` (a fingerprint of what must agree), naming the
/// first rank that differs from rank 0 and what `what` is.
pub fn check_agreement(group: &dyn Collective, value: u64, what: &str) -> Result<()> {
    let all = group.gather(value)?;
    match all.iter().position(|&v| v != all[0]) {
        None => Ok(()),
        Some(rank) => Err(Error::Invalid(format!(
            "rank {rank} of {} has other {what} than rank 0 (fingerprint {:016x} vs {:016x}): \
             every rank must be given the same files and settings",
            all.len(),
            all[rank],
            all[0]
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        let batch: Vec<usize> = (10..17).collect();
        for costs in [vec![5; 7], vec![1, 9, 2, 30, 4, 4, 4], vec![0; 7]] {
            for size in 1..=9 {
                let joined: Vec<usize> = (0..size)
                    .flat_map(|r| shard(&batch, &costs, r, size).to_vec())
                    .collect();
                assert_eq!(joined, batch, "size {size}, costs {costs:?}");
            }
        }
        // Equal costs: counts differing by at most one.
        let lens: Vec<usize> = (0..3).map(|r| shard(&batch, &[5; 7], r, 3).len()).collect();
        assert_eq!(lens, [2, 3, 2]);
    }

    #[test]
    fn shards_balance_tokens_not_examples() {
        let batch: Vec<usize> = (0..6).collect();
        let costs = [100, 10, 10, 10, 10, 60];
        // 200 tokens: the long first example alone, the rest together.
        assert_eq!(shard(&batch, &costs, 0, 2), &[0]);
        assert_eq!(shard(&batch, &costs, 1, 2), &[1, 2, 3, 4, 5]);
    }
}
