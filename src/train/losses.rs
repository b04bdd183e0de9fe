//! Every preference loss of TRL's `DPOTrainer` (TRL 1.16 `loss_type`), one function each, with
//! TRL's formulas and options. Inputs are per-pair sequence log-probs of the policy and the
//! reference; `delta` below is the (f-divergence) score of chosen minus rejected, which is the
//! reward margin over β for standard DPO.
//!
//! Several losses combine as a weighted sum of their batch means (MPO: `sigmoid`, `bco_pair`, `sft`
//! with weights 0.8, 0.2, 1.0).

use std::str::FromStr;

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, relu, sigmoid};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A preference loss, named as TRL's `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum PreferenceLoss {
    /// DPO (Rafailov et al. 2023): −log σ(β·Δ).
    Sigmoid,
    /// SLiC (Zhao et al. 2023): max(0, 1 − β·Δ).
    Hinge,
    /// IPO (Azar et al. 2023): (Δ/len − 1/(2β))², with log-ratios averaged per token.
    Ipo,
    /// EXO (Ji et al. 2024): KL(softmax(βΔ) ‖ [1−ε, ε]) over {chosen, rejected}.
    ExoPair,
    /// NCA (Chen et al. 2024): −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l).
    NcaPair,
    /// Robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate ε.
    Robust,
    /// BCO, paired (Jung et al. 2024): −log σ(r_w) − log σ(−r_l).
    BcoPair,
    /// SPPO, hard labels (Wu et al. 2024): (log-ratio_w − 1/(2β))² + (log-ratio_l + 1/(2β))².
    SppoHard,
    /// AOT (Melnyk et al. 2024): DPO on sorted policy vs sorted reference margins.
    Aot,
    /// AOT unpaired: DPO on sorted chosen vs sorted rejected log-ratios.
    AotUnpaired,
    /// APO-zero (D'Oosterlinck et al. 2024): raise chosen, lower rejected likelihood.
    ApoZero,
    /// APO-down: lower chosen likelihood, rejected more.
    ApoDown,
    /// DiscoPOP (Chris Lu et al. 2024): logistic and exponential losses blended by σ(βΔ/τ).
    Discopop,
    /// Negative log-likelihood of the chosen tokens (the SFT term of RPO/MPO).
    Sft,
    /// DPO on log-ratios averaged per token.
    SigmoidNorm,
    /// SimPO (Meng et al. 2024), reference-free: TRL's `CPOTrainer` with `loss_type="simpo"`,
    /// `cpo_alpha=0`. Formula and metrics in `reference_free.rs`.
    Simpo,
    /// ORPO (Hong et al. 2024), reference-free: TRL's `ORPOTrainer`. Formula and metrics in
    /// `reference_free.rs`.
    Orpo,
}

pub const ALL_LOSSES: [PreferenceLoss; 15] = [
    PreferenceLoss::Sigmoid,
    PreferenceLoss::Hinge,
    PreferenceLoss::Ipo,
    PreferenceLoss::ExoPair,
    PreferenceLoss::NcaPair,
    PreferenceLoss::Robust,
    PreferenceLoss::BcoPair,
    PreferenceLoss::SppoHard,
    PreferenceLoss::Aot,
    PreferenceLoss::AotUnpaired,
    PreferenceLoss::ApoZero,
    PreferenceLoss::ApoDown,
    PreferenceLoss::Discopop,
    PreferenceLoss::Sft,
    PreferenceLoss::SigmoidNorm,
];

/// The reference-free methods: trained alone, with no reference model loaded.
pub const REFERENCE_FREE_LOSSES: [PreferenceLoss; 2] =
    [PreferenceLoss::Simpo, PreferenceLoss::Orpo];

impl PreferenceLoss {
    pub fn is_reference_free(self) -> bool {
        REFERENCE_FREE_LOSSES.contains(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PreferenceLoss::Sigmoid => "sigmoid",
            PreferenceLoss::Hinge => "hinge",
            PreferenceLoss::Ipo => "ipo",
            PreferenceLoss::ExoPair => "exo_pair",
            PreferenceLoss::NcaPair => "nca_pair",
            PreferenceLoss::Robust => "robust",
            PreferenceLoss::BcoPair => "bco_pair",
            PreferenceLoss::SppoHard => "sppo_hard",
            PreferenceLoss::Aot => "aot",
            PreferenceLoss::AotUnpaired => "aot_unpaired",
            PreferenceLoss::ApoZero => "apo_zero",
            PreferenceLoss::ApoDown => "apo_down",
            PreferenceLoss::Discopop => "discopop",
            PreferenceLoss::Sft => "sft",
            PreferenceLoss::SigmoidNorm => "sigmoid_norm",
            PreferenceLoss::Simpo => "simpo",
            PreferenceLoss::Orpo => "orpo",
        }
    }

    /// The losses TRL generalizes to f-divergences (the others need the reverse KL).
    fn allows_f_divergence(self) -> bool {
        use PreferenceLoss::*;
        matches!(
            self,
            Sigmoid | SigmoidNorm | Hinge | Ipo | ExoPair | Robust | Discopop | Sft
        )
    }
}

impl FromStr for PreferenceLoss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let name = s.trim().to_ascii_lowercase();
        ALL_LOSSES
            .into_iter()
            .chain(REFERENCE_FREE_LOSSES)
            .find(|l| l.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = ALL_LOSSES
                    .iter()
                    .chain(&REFERENCE_FREE_LOSSES)
                    .map(|l| l.as_str())
                    .collect();
                Error::setting(
                    "loss",
                    format!("unknown loss `{s}` (one of {})", names.join(", ")),
                )
            })
    }
}

impl TryFrom<String> for PreferenceLoss {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl std::fmt::Display for PreferenceLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The f-divergence DPO's reward is derived from (f-DPO, Wang et al. 2023); `reverse_kl` is DPO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum FDivergence {
    #[default]
    ReverseKl,
    ForwardKl,
    JsDivergence,
    AlphaDivergence,
}

impl FromStr for FDivergence {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reverse_kl" => Ok(FDivergence::ReverseKl),
            "forward_kl" => Ok(FDivergence::ForwardKl),
            "js_divergence" => Ok(FDivergence::JsDivergence),
            "alpha_divergence" => Ok(FDivergence::AlphaDivergence),
            other => Err(Error::setting(
                "f_divergence_type",
                format!(
                    "unknown f-divergence `{other}` (reverse_kl, forward_kl, js_divergence or \
                     alpha_divergence)"
                ),
            )),
        }
    }
}

impl TryFrom<String> for FDivergence {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

/// One loss and its weight in the sum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossTerm {
    pub loss: PreferenceLoss,
    pub weight: f64,
}

fn default_losses() -> Vec<LossTerm> {
    vec![LossTerm {
        loss: PreferenceLoss::Sigmoid,
        weight: 1.0,
    }]
}

fn default_discopop_tau() -> f64 {
    0.05
}

fn one() -> f64 {
    1.0
}

fn default_simpo_gamma() -> f64 {
    0.5
}

/// The loss settings of `DPOConfig` (TRL's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossOptions {
    #[serde(default = "default_losses")]
    pub losses: Vec<LossTerm>,
    /// ε of `robust`, `exo_pair` and `aot`/`aot_unpaired`.
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default = "default_discopop_tau")]
    pub discopop_tau: f64,
    #[serde(default)]
    pub f_divergence_type: FDivergence,
    #[serde(default = "one")]
    pub f_alpha_divergence_coef: f64,
    /// LD-DPO (Liu et al. 2024): tokens past the shorter completion count `ld_alpha` times.
    #[serde(default)]
    pub ld_alpha: Option<f64>,
    /// WPO (Zhou et al. 2024): weight each pair by its completions' (aligned) probabilities.
    #[serde(default)]
    pub use_weighting: bool,
    /// SimPO's target reward margin γ (TRL's `simpo_gamma`).
    #[serde(default = "default_simpo_gamma")]
    pub simpo_gamma: f64,
}

impl Default for LossOptions {
    fn default() -> Self {
        Self {
            losses: default_losses(),
            label_smoothing: 0.0,
            discopop_tau: default_discopop_tau(),
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: 1.0,
            ld_alpha: None,
            use_weighting: false,
            simpo_gamma: default_simpo_gamma(),
        }
    }
}

impl LossOptions {
    pub fn uses(&self, loss: PreferenceLoss) -> bool {
        self.losses.iter().any(|t| t.loss == loss)
    }

    /// SimPO or ORPO: no reference model, TRL's CPO/ORPO tokenization and metrics.
    pub fn reference_free(&self) -> Option<PreferenceLoss> {
        self.losses
            .iter()
            .map(|t| t.loss)
            .find(|l| l.is_reference_free())
    }

    /// What a reference-free method cannot be combined with (it has its own trainer in TRL).
    fn validate_reference_free(&self, method: PreferenceLoss) -> Result<(), Error> {
        let refuse = |field: &str, what: &str| {
            Err(Error::setting(
                field,
                format!(
                    "{what} does not apply to {method}: TRL trains it with its own trainer                      ({}), which has no such option",
                    if method == PreferenceLoss::Simpo {
                        "CPOTrainer"
                    } else {
                        "ORPOTrainer"
                    }
                ),
            ))
        };
        if self.losses.len() > 1 {
            return Err(Error::setting(
                "loss",
                format!(
                    "{method} is a reference-free method and is trained alone; it cannot be                      combined with other losses"
                ),
            ));
        }
        if self.losses[0].weight != 1.0 {
            return refuse("loss_weights", "a loss weight");
        }
        if self.f_divergence_type != FDivergence::ReverseKl {
            return refuse("f_divergence_type", "an f-divergence");
        }
        if self.ld_alpha.is_some() {
            return refuse("ld_alpha", "LD-DPO's ld_alpha");
        }
        if self.use_weighting {
            return refuse("use_weighting", "WPO weighting");
        }
        if method == PreferenceLoss::Orpo && self.label_smoothing != 0.0 {
            return refuse("label_smoothing", "label smoothing");
        }
        Ok(())
    }

    /// The combinations TRL accepts, with TRL's reasons for the others.
    pub fn validate(&self) -> Result<(), Error> {
        if self.losses.is_empty() {
            return Err(Error::setting("loss", "at least one loss is needed"));
        }
        for term in &self.losses {
            if !term.weight.is_finite() {
                return Err(Error::setting(
                    "loss_weights",
                    format!("{} is not valid (must be a finite number)", term.weight),
                ));
            }
        }
        let eps = self.label_smoothing;
        if !(0.0..0.5).contains(&eps) {
            return Err(Error::setting(
                "label_smoothing",
                format!("{eps} is not valid (must be in [0, 0.5))"),
            ));
        }
        if !self.simpo_gamma.is_finite() {
            return Err(Error::setting(
                "simpo_gamma",
                format!("{} is not valid (must be finite)", self.simpo_gamma),
            ));
        }
        if let Some(method) = self.reference_free() {
            return self.validate_reference_free(method);
        }
        if self.uses(PreferenceLoss::ExoPair) && eps == 0.0 {
            return Err(Error::setting(
                "label_smoothing",
                "must be greater than 0 with the exo_pair loss (the EXO paper recommends 1e-3)",
            ));
        }
        if !(self.discopop_tau.is_finite() && self.discopop_tau > 0.0) {
            return Err(Error::setting(
                "discopop_tau",
                format!(
                    "{} is not valid (must be a finite number > 0)",
                    self.discopop_tau
                ),
            ));
        }
        if !self.f_alpha_divergence_coef.is_finite() {
            return Err(Error::setting(
                "f_alpha_divergence_coef",
                format!(
                    "{} is not valid (must be finite)",
                    self.f_alpha_divergence_coef
                ),
            ));
        }
        if let Some(alpha) = self.ld_alpha
            && !(alpha.is_finite() && (0.0..=1.0).contains(&alpha))
        {
            return Err(Error::setting(
                "ld_alpha",
                format!("{alpha} is not valid (must be in [0, 1])"),
            ));
        }
        if self.f_divergence_type != FDivergence::ReverseKl
            && let Some(term) = self.losses.iter().find(|t| !t.loss.allows_f_divergence())
        {
            return Err(Error::setting(
                "f_divergence_type",
                format!(
                    "{:?} works only with the sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, \
                     discopop and sft losses, not {} (the f-DPO reparameterization leaves a term \
                     that only cancels in the chosen-rejected difference)",
                    self.f_divergence_type, term.loss
                ),
            ));
        }
        if self.use_weighting
            && (self.uses(PreferenceLoss::Aot) || self.uses(PreferenceLoss::AotUnpaired))
        {
            return Err(Error::setting(
                "use_weighting",
                "WPO weighting does not work with aot or aot_unpaired: those losses sort the \
                 pairs, which would misalign the per-pair weights",
            ));
        }
        Ok(())
    }
}

/// One batch of `n` pairs, on the device. Log-probs are sequence sums (LD-DPO-weighted when
/// `ld_alpha` is set).
pub struct PairInputs {
    pub chosen_logps: Tensor<1>,
    pub rejected_logps: Tensor<1>,
    pub ref_chosen_logps: Tensor<1>,
    pub ref_rejected_logps: Tensor<1>,
    /// Completion tokens per pair (at least 1), for the per-token losses.
    pub chosen_lengths: Tensor<1>,
    pub rejected_lengths: Tensor<1>,
    /// Σ of the chosen completions' token log-probs (never LD-weighted), `[1]`, and what it is
    /// divided by for the SFT term: how many tokens that is, or for a share of a batch split
    /// between processes, the whole batch's count times this share's part of its pairs (so the
    /// shares' terms, weighted by their pairs, add up to the whole batch's).
    pub chosen_token_logp_sum: Tensor<1>,
    pub chosen_token_normalizer: f64,
    /// WPO: per-pair weights (detached), when `use_weighting`.
    pub pair_weights: Option<Tensor<1>>,
}

/// The weighted sum of `options.losses`, each the mean over the batch, `[1]`.
pub fn preference_loss(inputs: &PairInputs, options: &LossOptions, beta: f64) -> Tensor<1> {
    let chosen_logratios = inputs.chosen_logps.clone() - inputs.ref_chosen_logps.clone();
    let rejected_logratios = inputs.rejected_logps.clone() - inputs.ref_rejected_logps.clone();
    let score = |x: Tensor<1>| f_divergence_score(x, options);
    let chosen_scores = score(chosen_logratios.clone());
    let rejected_scores = score(rejected_logratios.clone());
    let delta = chosen_scores.clone() - rejected_scores.clone();
    let r = Ratios {
        chosen: chosen_logratios,
        rejected: rejected_logratios,
        chosen_scores,
        rejected_scores,
        delta,
        beta,
        eps: options.label_smoothing,
    };
    let mut total: Option<Tensor<1>> = None;
    for term in &options.losses {
        let per_pair = match term.loss {
            PreferenceLoss::Sigmoid => sigmoid_loss(&r),
            PreferenceLoss::Hinge => hinge(&r),
            PreferenceLoss::Ipo => ipo(&r, inputs),
            PreferenceLoss::ExoPair => exo_pair(&r),
            PreferenceLoss::NcaPair => nca_pair(&r),
            PreferenceLoss::Robust => robust(&r),
            PreferenceLoss::BcoPair => bco_pair(&r),
            PreferenceLoss::SppoHard => sppo_hard(&r),
            PreferenceLoss::Aot => aot(&r, inputs),
            PreferenceLoss::AotUnpaired => aot_unpaired(&r),
            PreferenceLoss::ApoZero => apo_zero(&r),
            PreferenceLoss::ApoDown => apo_down(&r),
            PreferenceLoss::Discopop => discopop(&r, options.discopop_tau),
            PreferenceLoss::Sft => sft(&r, inputs),
            PreferenceLoss::SigmoidNorm => sigmoid_norm(&r, inputs),
            PreferenceLoss::Simpo | PreferenceLoss::Orpo => {
                unreachable!("validated: reference-free methods go through reference_free.rs")
            }
        };
        let per_pair = match &inputs.pair_weights {
            Some(w) => per_pair * w.clone(),
            None => per_pair,
        };
        let term_loss = per_pair.mean().mul_scalar(term.weight);
        total = Some(match total {
            Some(t) => t + term_loss,
            None => term_loss,
        });
    }
    total.expect("validated: at least one loss")
}

/// Per-pair quantities every loss draws from.
struct Ratios {
    /// log π(y_w|x) − log π_ref(y_w|x), and for y_l.
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    /// The same through the f-divergence's f′ (equal to the log-ratios for reverse KL).
    chosen_scores: Tensor<1>,
    rejected_scores: Tensor<1>,
    /// chosen_scores − rejected_scores.
    delta: Tensor<1>,
    beta: f64,
    eps: f64,
}

/// f′ of the divergence applied to a log-ratio `x = log t` (TRL's `f_divergence_type`).
fn f_divergence_score(x: Tensor<1>, options: &LossOptions) -> Tensor<1> {
    match options.f_divergence_type {
        FDivergence::ReverseKl => x,
        // f′(t) = 1 − 1/t
        FDivergence::ForwardKl => x.neg().exp().neg().add_scalar(1.0),
        // f′(t) = log(2t/(t+1)) = log 2 + log σ(log t)
        FDivergence::JsDivergence => log_sigmoid(x).add_scalar(std::f64::consts::LN_2),
        // f′(t) = (t^(α−1) − 1)/(α−1); α → 1 is the reverse KL
        FDivergence::AlphaDivergence => {
            let alpha = options.f_alpha_divergence_coef;
            if (alpha - 1.0).abs() < 1e-6 {
                x
            } else {
                x.mul_scalar(alpha - 1.0)
                    .clamp_max(80.0)
                    .exp()
                    .sub_scalar(1.0)
                    .div_scalar(alpha - 1.0)
            }
        }
    }
}

fn sigmoid_loss(r: &Ratios) -> Tensor<1> {
    log_sigmoid(r.delta.clone().mul_scalar(r.beta)).neg()
}

fn hinge(r: &Ratios) -> Tensor<1> {
    relu(r.delta.clone().mul_scalar(-r.beta).add_scalar(1.0))
}

/// Scores averaged per completion token, as TRL (confirmed with the IPO authors) does.
fn per_token_delta(r: &Ratios, inputs: &PairInputs) -> Tensor<1> {
    r.chosen_scores.clone() / inputs.chosen_lengths.clone()
        - r.rejected_scores.clone() / inputs.rejected_lengths.clone()
}

fn ipo(r: &Ratios, inputs: &PairInputs) -> Tensor<1> {
    per_token_delta(r, inputs)
        .sub_scalar(1.0 / (2.0 * r.beta))
        .powi_scalar(2)
}

fn exo_pair(r: &Ratios) -> Tensor<1> {
    let logits = r.delta.clone().mul_scalar(r.beta);
    let (log_pw, log_pl) = ((-r.eps).ln_1p(), r.eps.ln());
    let qw = sigmoid(logits.clone());
    let ql = sigmoid(logits.clone().neg());
    qw * log_sigmoid(logits.clone()).sub_scalar(log_pw)
        + ql * log_sigmoid(logits.neg()).sub_scalar(log_pl)
}

fn nca_pair(r: &Ratios) -> Tensor<1> {
    let chosen_rewards = r.chosen.clone().mul_scalar(r.beta);
    let rejected_rewards = r.rejected.clone().mul_scalar(r.beta);
    log_sigmoid(chosen_rewards.clone()).neg()
        - log_sigmoid(chosen_rewards.neg()).mul_scalar(0.5)
        - log_sigmoid(rejected_rewards.neg()).mul_scalar(0.5)
}

fn robust(r: &Ratios) -> Tensor<1> {
    let logits = r.delta.clone().mul_scalar(r.beta);
    let clean = log_sigmoid(logits.clone()).mul_scalar(-(1.0 - r.eps));
    let flipped = log_sigmoid(logits.neg()).mul_scalar(-r.eps);
    (clean - flipped).div_scalar(1.0 - 2.0 * r.eps)
}

fn bco_pair(r: &Ratios) -> Tensor<1> {
    log_sigmoid(r.chosen.clone().mul_scalar(r.beta)).neg()
        - log_sigmoid(r.rejected.clone().mul_scalar(-r.beta))
}

fn sppo_hard(r: &Ratios) -> Tensor<1> {
    let half = 0.5 / r.beta;
    r.chosen.clone().sub_scalar(half).powi_scalar(2)
        + r.rejected.clone().add_scalar(half).powi_scalar(2)
}

/// DPO with label smoothing on `delta`.
fn smoothed_sigmoid(delta: Tensor<1>, beta: f64, eps: f64) -> Tensor<1> {
    let logits = delta.mul_scalar(beta);
    log_sigmoid(logits.clone()).mul_scalar(-(1.0 - eps)) - log_sigmoid(logits.neg()).mul_scalar(eps)
}

fn aot(r: &Ratios, inputs: &PairInputs) -> Tensor<1> {
    let margins = inputs.chosen_logps.clone() - inputs.rejected_logps.clone();
    let ref_margins = inputs.ref_chosen_logps.clone() - inputs.ref_rejected_logps.clone();
    smoothed_sigmoid(
        sorted_ascending(margins) - sorted_ascending(ref_margins),
        r.beta,
        r.eps,
    )
}

fn aot_unpaired(r: &Ratios) -> Tensor<1> {
    smoothed_sigmoid(
        sorted_ascending(r.chosen.clone()) - sorted_ascending(r.rejected.clone()),
        r.beta,
        r.eps,
    )
}

fn apo_zero(r: &Ratios) -> Tensor<1> {
    sigmoid(r.chosen.clone().mul_scalar(r.beta))
        .neg()
        .add_scalar(1.0)
        + sigmoid(r.rejected.clone().mul_scalar(r.beta))
}

fn apo_down(r: &Ratios) -> Tensor<1> {
    sigmoid(r.chosen.clone().mul_scalar(r.beta))
        + sigmoid((r.chosen.clone() - r.rejected.clone()).mul_scalar(r.beta))
            .neg()
            .add_scalar(1.0)
}

fn discopop(r: &Ratios, tau: f64) -> Tensor<1> {
    let logits = r.delta.clone().mul_scalar(r.beta);
    let modulation = sigmoid(logits.clone().div_scalar(tau));
    let logistic = log_sigmoid(logits.clone()).neg();
    let exponential = logits.neg().exp();
    logistic * modulation.clone().neg().add_scalar(1.0) + exponential * modulation
}

/// The mean negative log-likelihood of every chosen token, the same for each pair.
fn sft(r: &Ratios, inputs: &PairInputs) -> Tensor<1> {
    let n = r.chosen.dims()[0];
    inputs
        .chosen_token_logp_sum
        .clone()
        .div_scalar(inputs.chosen_token_normalizer.max(1.0))
        .neg()
        .expand([n])
}

fn sigmoid_norm(r: &Ratios, inputs: &PairInputs) -> Tensor<1> {
    log_sigmoid(per_token_delta(r, inputs).mul_scalar(r.beta)).neg()
}

/// `x` sorted ascending, differentiably and on the device (no readback, so it also runs in a
/// browser): each element's rank is counted from comparisons, ties broken by position, and a
/// 0/1 permutation matrix puts it there.
fn sorted_ascending(x: Tensor<1>) -> Tensor<1> {
    let n = x.dims()[0];
    let device = x.device();
    let values = x.clone().detach();
    let column = values.clone().reshape([n, 1]).expand([n, n]); // [i, j] = x_i
    let row = values.reshape([1, n]).expand([n, n]); // [i, j] = x_j
    let below: Vec<f32> = (0..n * n)
        .map(|k| if k % n < k / n { 1.0 } else { 0.0 })
        .collect();
    let before = Tensor::<2>::from_data(burn::tensor::TensorData::new(below, [n, n]), &device);
    // rank_i = #{j: x_j < x_i} + #{j < i: x_j = x_i}
    let smaller = row.clone().lower(column.clone()).float();
    let tied_before = row.equal(column).float() * before;
    let rank = (smaller + tied_before).sum_dim(1); // [n, 1]
    let positions = Tensor::<1, burn::tensor::Int>::arange(0..n as i64, &device)
        .float()
        .reshape([1, n])
        .expand([n, n]);
    // permutation[i, r] = 1 where rank_i == r; sorted = permutationᵀ · x
    let permutation = rank.expand([n, n]).equal(positions).float();
    permutation
        .transpose()
        .matmul(x.reshape([n, 1]))
        .reshape([n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_combinations_are_refused() {
        for loss in ALL_LOSSES {
            assert_eq!(loss.as_str().parse::<PreferenceLoss>().unwrap(), loss);
        }
        assert!("dpo".parse::<PreferenceLoss>().is_err());
        let with = |losses: &[PreferenceLoss], f: FDivergence, eps: f64, weighting: bool| {
            LossOptions {
                losses: losses
                    .iter()
                    .map(|&loss| LossTerm { loss, weight: 1.0 })
                    .collect(),
                f_divergence_type: f,
                label_smoothing: eps,
                use_weighting: weighting,
                ..LossOptions::default()
            }
            .validate()
        };
        use PreferenceLoss::*;
        assert!(with(&[Sigmoid], FDivergence::JsDivergence, 0.0, false).is_ok());
        assert!(with(&[BcoPair], FDivergence::ForwardKl, 0.0, false).is_err());
        assert!(with(&[ExoPair], FDivergence::ReverseKl, 0.0, false).is_err());
        assert!(with(&[ExoPair], FDivergence::ReverseKl, 1e-3, false).is_ok());
        assert!(with(&[Aot], FDivergence::ReverseKl, 0.0, true).is_err());
        assert!(with(&[Robust], FDivergence::ReverseKl, 0.5, false).is_err());
    }
}
