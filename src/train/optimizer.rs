//! The optimizer step (AdamW; SGD with momentum) and its per-parameter state, held here rather
//! than in burn's `ModuleOptimizer` so that a checkpoint can read the state back asynchronously:
//! burn 0.22 records optimizer state with synchronous tensor reads, which a browser forbids. The
//! arithmetic is burn 0.22's `AdamW` and `Sgd`, operation for operation (the parity tests against
//! torch's optimizers in `tests/` hold it to that).

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::clipping::scaled;
use super::optim::{OptimizerKind, OptimizerSettings, ParamInfo};
use crate::error::{Error, Location, Result};
use crate::io::safetensors::{FileBytes, SafetensorsSource, TensorWriter};
use crate::model::weights::{HostTensor, WeightSource, to_host};

/// One parameter's state, flattened to a vector (parameters are vectors and matrices).
#[derive(Clone)]
struct ParamState {
    /// Steps taken (AdamW's bias correction).
    time: usize,
    /// AdamW's first moment, or SGD's velocity.
    first: Option<Tensor<1>>,
    /// AdamW's second moment.
    second: Option<Tensor<1>>,
}

/// AdamW or SGD over a model's trainable parameters, with Hugging Face's weight-decay rule (no
/// decay for biases and normalization weights).
#[derive(Clone)]
pub struct Optimizer {
    kind: OptimizerKind,
    settings: OptimizerSettings,
    weight_decay: f64,
    decays: HashSet<ParamId>,
    states: HashMap<ParamId, ParamState>,
}

impl Optimizer {
    pub fn new(
        kind: OptimizerKind,
        weight_decay: f64,
        settings: &OptimizerSettings,
        params: &[ParamInfo],
    ) -> Self {
        Self {
            kind,
            settings: *settings,
            weight_decay,
            decays: params
                .iter()
                .filter(|p| p.role.decays())
                .map(|p| p.id)
                .collect(),
            states: HashMap::new(),
        }
    }

    /// Apply `grads`, each multiplied by `grad_scale` (a one-element tensor: the clipping
    /// coefficient, `clipping::clip_grad_norm`) when there is one, to `module`'s parameters at
    /// learning rate `lr`.
    pub fn step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
        grad_scale: Option<&Tensor<1>>,
    ) -> M {
        module.map(&mut StepMapper {
            optimizer: self,
            grads: &mut grads,
            grad_scale,
            lr,
        })
    }

    /// One parameter's update (burn 0.22's `AdamW::step` / `Sgd::step`).
    fn update<const D: usize>(
        &mut self,
        id: ParamId,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        grad_scale: Option<&Tensor<1>>,
        lr: f64,
    ) -> Tensor<D> {
        let shape = tensor.shape();
        let numel = shape.num_elements();
        let weight_decay = if self.decays.contains(&id) {
            self.weight_decay as f32
        } else {
            0.0
        };
        let state = self.states.remove(&id);
        let shaped = |t: Tensor<1>| t.reshape(shape.clone());
        let (updated, state) = match self.kind {
            OptimizerKind::AdamW => {
                let (time, moments) = match state {
                    Some(ParamState {
                        time,
                        first: Some(m1),
                        second: Some(m2),
                    }) => (time + 1, Some((m1, m2))),
                    _ => (1, None),
                };
                let (beta_1, beta_2) = (
                    self.settings.adam_beta1 as f32,
                    self.settings.adam_beta2 as f32,
                );
                let decay_rate = lr * weight_decay as f64;
                let scalars = AdamWScalars {
                    beta_1,
                    beta_2,
                    epsilon: self.settings.adam_epsilon as f32,
                    correction_1: 1.0 - beta_1.powi(time as i32),
                    correction_2: 1.0 - beta_2.powi(time as i32),
                    lr: lr as f32,
                    decay: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
                };
                let (updated, m1, m2) =
                    super::fused_adamw::adamw_update((tensor, grad, moments), grad_scale, &scalars);
                let state = ParamState {
                    time,
                    first: Some(m1),
                    second: Some(m2),
                };
                (updated, state)
            }
            OptimizerKind::Sgd => {
                let grad = scaled(grad, grad_scale);
                // torch's SGD weight decay adds wd·θ to the gradient.
                let mut grad = if weight_decay > 0.0 {
                    tensor.clone().mul_scalar(weight_decay).add(grad)
                } else {
                    grad
                };
                let mut velocity_out = None;
                let momentum = self.settings.sgd_momentum;
                if momentum > 0.0 {
                    // No dampening: v = g at first, then v = g + μ·v (burn multiplies g by
                    // 1 − dampening = 1 first; skipping that no-op kernel changes no bit).
                    let velocity = match state.and_then(|s| s.first) {
                        Some(v) => grad.clone().add(shaped(v).mul_scalar(momentum)),
                        None => grad.clone(),
                    };
                    grad = if self.settings.sgd_nesterov {
                        velocity.clone().mul_scalar(momentum).add(grad)
                    } else {
                        velocity.clone()
                    };
                    velocity_out = Some(velocity.reshape([numel]));
                }
                let state = ParamState {
                    time: 0,
                    first: velocity_out,
                    second: None,
                };
                (tensor - grad.mul_scalar(lr), state)
            }
        };
        self.states.insert(id, state);
        updated
    }

    /// Numbers the state holds (moments or velocities of every parameter stepped so far).
    pub fn state_len(&self) -> usize {
        self.states
            .values()
            .flat_map(|s| [&s.first, &s.second])
            .flatten()
            .map(|t| t.dims()[0])
            .sum()
    }

    /// The state as safetensors bytes: `<param id>.first`, `<param id>.second` and
    /// `<param id>.time` (a one-element tensor) for every parameter that has state. Reads the
    /// device asynchronously.
    pub async fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut writer = TensorWriter::default();
        for (id, state) in &self.states {
            let key = id.val();
            for (part, tensor) in [("first", &state.first), ("second", &state.second)] {
                if let Some(tensor) = tensor {
                    writer.add(format!("{key}.{part}"), to_host(tensor.clone()).await?);
                }
            }
            writer.add(
                format!("{key}.time"),
                HostTensor {
                    shape: vec![1],
                    data: vec![state.time as f32],
                },
            );
        }
        writer.to_bytes()
    }

    /// Load a state written by [`Optimizer::to_bytes`] for the same parameters (ids) on `device`.
    /// `label` names the file in errors.
    pub fn load_bytes(&mut self, bytes: Vec<u8>, label: &str, device: &Device) -> Result<()> {
        let source =
            SafetensorsSource::new(label, vec![(label.to_string(), FileBytes::Owned(bytes))])?;
        let mut states: HashMap<u64, ParamState> = HashMap::new();
        let names: Vec<String> = source.names().map(str::to_string).collect();
        for name in names {
            let bad = |why: &str| Error::input(Location::file(label).field(&name), why.to_string());
            let (key, part) = name
                .split_once('.')
                .ok_or_else(|| bad("not <param id>.<part>"))?;
            let key: u64 = key.parse().map_err(|_| bad("not <param id>.<part>"))?;
            let host = source.read(&name)?;
            let state = states.entry(key).or_insert(ParamState {
                time: 0,
                first: None,
                second: None,
            });
            let tensor = || {
                let n = host.data.len();
                Tensor::<1>::from_data(TensorData::new(host.data.clone(), [n]), device)
            };
            match part {
                "first" => state.first = Some(tensor()),
                "second" => state.second = Some(tensor()),
                "time" => state.time = host.data.first().copied().unwrap_or(0.0) as usize,
                _ => return Err(bad("unknown part (first, second or time)")),
            }
        }
        self.states = states
            .into_iter()
            .map(|(key, state)| (ParamId::from(key), state))
            .collect();
        Ok(())
    }
}

/// The scalars of one AdamW update of one parameter, in `f32` as the tensor operations use them.
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// 1 − β₁ᵗ and 1 − β₂ᵗ.
    pub correction_1: f32,
    pub correction_2: f32,
    pub lr: f32,
    /// 1 − lr·weight_decay, or `None` without decay.
    pub decay: Option<f32>,
}

#[cfg(test)]
impl AdamWScalars {
    /// The tests' update at step `time` (torch's defaults, lr 5e-4), with `decay` or without.
    pub fn at_step(time: i32, decay: Option<f32>) -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            correction_1: 1.0 - 0.9f32.powi(time),
            correction_2: 1.0 - 0.999f32.powi(time),
            lr: 5e-4,
            decay,
        }
    }
}

/// burn 0.22's `AdamW::step` in tensor operations: the updated parameter and its moments
/// (`moments` is `None` before the first step). `fused_adamw/` is the same arithmetic in one
/// pass (on the CPU backend and on wgpu).
pub(super) fn adamw_composed<const D: usize>(
    tensor: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<1>, Tensor<1>)>,
    s: &AdamWScalars,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let shape = tensor.shape();
    let numel = shape.num_elements();
    let (factor_1, factor_2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
    let (moment_1, moment_2) = match moments {
        Some((m1, m2)) => (
            m1.reshape(shape.clone())
                .mul_scalar(s.beta_1)
                .add(grad.clone().mul_scalar(factor_1)),
            m2.reshape(shape.clone())
                .mul_scalar(s.beta_2)
                .add(grad.square().mul_scalar(factor_2)),
        ),
        None => (
            grad.clone().mul_scalar(factor_1),
            grad.square().mul_scalar(factor_2),
        ),
    };
    let corrected_1 = moment_1.clone().div_scalar(s.correction_1);
    let corrected_2 = moment_2.clone().div_scalar(s.correction_2);
    let delta = corrected_1.div(corrected_2.sqrt().add_scalar(s.epsilon));
    let decayed = match s.decay {
        Some(factor) => tensor.mul_scalar(factor),
        None => tensor,
    };
    (
        decayed - delta.mul_scalar(s.lr),
        moment_1.reshape([numel]),
        moment_2.reshape([numel]),
    )
}

/// Walks a module's parameters, updating those that have a gradient.
struct StepMapper<'a> {
    optimizer: &'a mut Optimizer,
    grads: &'a mut GradientsParams,
    grad_scale: Option<&'a Tensor<1>>,
    lr: f64,
}

impl ModuleMapper for StepMapper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let updated = self
            .optimizer
            .update(id, tensor.inner(), grad, self.grad_scale, self.lr);
        let mut tensor = Tensor::from_inner(updated);
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}
