//! What steps and evaluations report, under TRL's names, and how an evaluation aggregates its
//! batches.

use serde::{Deserialize, Serialize};

use super::dpo::DpoMetrics;
use super::reference_free::ReferenceFreeMetrics;
use super::sft::SftMetrics;

/// Metrics of a step or an evaluation, under TRL's names when serialized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Metrics {
    Dpo(DpoMetrics),
    /// SimPO and ORPO (no reference model).
    ReferenceFree(ReferenceFreeMetrics),
    Sft(SftMetrics),
}

impl Metrics {
    pub fn loss(&self) -> f64 {
        match self {
            Metrics::Dpo(m) => m.loss,
            Metrics::ReferenceFree(m) => m.loss,
            Metrics::Sft(m) => m.loss,
        }
    }

    pub fn dpo(&self) -> Option<&DpoMetrics> {
        match self {
            Metrics::Dpo(m) => Some(m),
            _ => None,
        }
    }

    /// Reward accuracy and margin, for every preference method.
    pub fn rewards(&self) -> Option<(f64, f64)> {
        match self {
            Metrics::Dpo(m) => Some((m.rewards_accuracies, m.rewards_margins)),
            Metrics::ReferenceFree(m) => Some((m.rewards_accuracies, m.rewards_margins)),
            Metrics::Sft(_) => None,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    #[serde(flatten)]
    pub metrics: Metrics,
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub seconds: f64,
    /// Tokens the policy read in this step (both answers of each pair, padding excluded).
    #[serde(default)]
    pub tokens: usize,
    /// Data-parallel runs: seconds this rank spent in the step's all-reduce (waiting for the
    /// slowest rank included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_seconds: Option<f64>,
    /// The loss or gradient was NaN or infinite, so the update was not applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl Metrics {
    /// One `metrics.jsonl` record of an evaluation at `step`: TRL's `eval_`-prefixed names.
    pub fn eval_record(&self, step: usize) -> serde_json::Value {
        self.prefixed_record("eval", step)
    }

    /// A record with every name prefixed (`test_loss`, as the Trainer's `predict` names them).
    pub fn prefixed_record(&self, prefix: &str, step: usize) -> serde_json::Value {
        let value = serde_json::to_value(self).expect("metrics serialize");
        let mut record = serde_json::Map::from_iter([("step".to_string(), step.into())]);
        for (k, v) in value.as_object().expect("metrics are an object") {
            record.insert(format!("{prefix}_{k}"), v.clone());
        }
        record.into()
    }
}

/// Aggregates per-batch metrics the way the Trainer reports an evaluation: the loss is weighted
/// by each batch's size (its mean loss repeated per row), every other metric is the plain mean of
/// the per-batch values (`DPOTrainer.log`/`SFTTrainer.log` average their per-batch lists).
#[derive(Debug, Default, Clone)]
pub struct MetricsAccumulator {
    sums: serde_json::Map<String, serde_json::Value>,
    batches: usize,
    weighted_loss: f64,
    rows: usize,
}

impl MetricsAccumulator {
    pub fn add<M: Serialize>(&mut self, batch: &M, rows: usize) {
        let value = serde_json::to_value(batch).expect("metrics serialize");
        for (key, v) in value.as_object().expect("metrics are an object") {
            let v = v.as_f64().unwrap_or(0.0);
            let sum = self.sums.entry(key.clone()).or_insert(0.0.into());
            *sum = (sum.as_f64().unwrap_or(0.0) + v).into();
            if key == "loss" {
                self.weighted_loss += v * rows as f64;
            }
        }
        self.batches += 1;
        self.rows += rows;
    }

    /// Add a batch's metrics of any kind (one kind per accumulator).
    pub fn add_metrics(&mut self, batch: &Metrics, rows: usize) {
        match batch {
            Metrics::Dpo(m) => self.add(m, rows),
            Metrics::ReferenceFree(m) => self.add(m, rows),
            Metrics::Sft(m) => self.add(m, rows),
        }
    }

    /// The aggregate, of the same kind as `sample`.
    pub fn mean_like(&self, sample: &Metrics) -> Metrics {
        match sample {
            Metrics::Dpo(_) => Metrics::Dpo(self.mean()),
            Metrics::ReferenceFree(_) => Metrics::ReferenceFree(self.mean()),
            Metrics::Sft(_) => Metrics::Sft(self.mean()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }

    pub fn mean<M: serde::de::DeserializeOwned>(&self) -> M {
        let n = self.batches.max(1) as f64;
        let mut out = serde_json::Map::new();
        for (key, sum) in &self.sums {
            let mean = if key == "loss" {
                self.weighted_loss / self.rows.max(1) as f64
            } else {
                sum.as_f64().unwrap_or(0.0) / n
            };
            out.insert(key.clone(), mean.into());
        }
        serde_json::from_value(out.into()).expect("same keys as serialized")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_follows_trl() {
        let mut acc = MetricsAccumulator::default();
        let a = DpoMetrics {
            loss: 1.0,
            rewards_accuracies: 1.0,
            ..Default::default()
        };
        let b = DpoMetrics {
            loss: 4.0,
            rewards_accuracies: 0.0,
            ..Default::default()
        };
        acc.add(&a, 3);
        acc.add(&b, 1);
        let m: DpoMetrics = acc.mean();
        assert!((m.loss - (3.0 + 4.0) / 4.0).abs() < 1e-12);
        assert!((m.rewards_accuracies - 0.5).abs() < 1e-12);
    }
}
