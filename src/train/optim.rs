//! Optimizer settings and learning-rate schedules, with Hugging Face Trainer semantics.

use std::str::FromStr;

use burn::module::ParamId;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{NamedParam, ParamRole, ParamTensor};

/// Read with `FromStr` (any case) from text and JSON alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum OptimizerKind {
    /// torch.optim.AdamW defaults: betas (0.9, 0.999), eps 1e-8.
    AdamW,
    /// SGD, as the Trainer's `optim="sgd"` (momentum from `OptimizerSettings`).
    Sgd,
}

impl FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "adamw" => Ok(Self::AdamW),
            "sgd" => Ok(Self::Sgd),
            other => Err(Error::setting(
                "optimizer",
                format!("unknown optimizer `{other}` (adamw or sgd)"),
            )),
        }
    }
}

/// Read with `FromStr` (any case) from text and JSON alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LrSchedule {
    Constant,
    /// Linear decay to 0 after warmup (the Trainer's default).
    Linear,
    Cosine,
}

impl FromStr for LrSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            other => Err(Error::setting(
                "lr_schedule",
                format!("unknown lr schedule `{other}` (constant, linear or cosine)"),
            )),
        }
    }
}

impl TryFrom<String> for LrSchedule {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl TryFrom<String> for OptimizerKind {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl LrSchedule {
    /// Learning rate for the optimizer step `step` (0-based) of `total`, as transformers'
    /// `get_*_schedule_with_warmup` lambdas give it.
    pub fn lr_at(self, base: f64, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return base * step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Linear => base * (1.0 - progress).max(0.0),
            LrSchedule::Cosine => {
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0)
            }
        }
    }
}

/// Rank and role of a parameter, recorded once: ids survive optimizer steps.
#[derive(Debug, Clone, Copy)]
pub struct ParamInfo {
    pub id: ParamId,
    pub rank: usize,
    /// The tensor's dimensions (a vector's length, then 1).
    pub dims: [usize; 2],
    pub role: ParamRole,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.dims[0] * self.dims[1]
    }
}

pub fn param_infos(params: &[NamedParam]) -> Vec<ParamInfo> {
    params
        .iter()
        .map(|p| ParamInfo {
            id: p.id,
            rank: match p.tensor {
                ParamTensor::Vector(_) => 1,
                ParamTensor::Matrix { .. } => 2,
            },
            dims: match &p.tensor {
                ParamTensor::Vector(t) => [t.dims()[0], 1],
                ParamTensor::Matrix { tensor, .. } => tensor.dims(),
            },
            role: p.role,
        })
        .collect()
}

/// The optimizer's own settings (transformers' `TrainingArguments` names and defaults; SGD's
/// momentum as `optim_args="momentum=…"` gives it to torch's SGD).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSettings {
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_epsilon")]
    pub adam_epsilon: f64,
    /// SGD momentum (0: plain SGD), torch's rule: v = μ·v + g (no dampening), v = g at first.
    #[serde(default)]
    pub sgd_momentum: f64,
    #[serde(default)]
    pub sgd_nesterov: bool,
}

fn default_beta1() -> f64 {
    0.9
}

fn default_beta2() -> f64 {
    0.999
}

fn default_epsilon() -> f64 {
    1e-8
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        Self {
            adam_beta1: default_beta1(),
            adam_beta2: default_beta2(),
            adam_epsilon: default_epsilon(),
            sgd_momentum: 0.0,
            sgd_nesterov: false,
        }
    }
}

impl OptimizerSettings {
    pub fn validate(&self) -> Result<(), Error> {
        use super::options::check;
        for (field, beta) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            check(field, beta, (0.0..1.0).contains(&beta), "in [0, 1)")?;
        }
        let eps = self.adam_epsilon;
        check(
            "adam_epsilon",
            eps,
            eps.is_finite() && eps > 0.0,
            "a finite number > 0",
        )?;
        let m = self.sgd_momentum;
        check("sgd_momentum", m, (0.0..1.0).contains(&m), "in [0, 1)")?;
        if self.sgd_nesterov && m == 0.0 {
            return Err(Error::setting(
                "sgd_nesterov",
                "Nesterov momentum needs sgd_momentum > 0 (torch refuses it otherwise)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // get_linear_schedule_with_warmup(total=10, warmup=2)
        let lin = |s| LrSchedule::Linear.lr_at(1.0, s, 10, 2);
        assert_eq!(lin(0), 0.0);
        assert_eq!(lin(1), 0.5);
        assert_eq!(lin(2), 1.0);
        assert!((lin(6) - 0.5).abs() < 1e-12);
        assert_eq!(LrSchedule::Linear.lr_at(1.0, 0, 4, 0), 1.0);
        assert_eq!(LrSchedule::Linear.lr_at(1.0, 3, 4, 0), 0.25);
        assert_eq!(LrSchedule::Constant.lr_at(0.1, 7, 10, 0), 0.1);
        assert!((LrSchedule::Cosine.lr_at(1.0, 5, 10, 0) - 0.5).abs() < 1e-12);
    }
}
