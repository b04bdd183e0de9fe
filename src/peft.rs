//! LoRA adapters in PEFT's format: attach fresh ones, load `adapter_config.json` +
//! `adapter_model.safetensors`, export them back, or fold them into the weights.

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bundle::ExportedFiles;
use crate::error::{Error, Location, Result};
use crate::model::lora::LowRank;
use crate::model::{CausalLm, NamedParam, ParamRole, ParamTensor};
use crate::weights::{TensorWriter, WeightSource};

/// Adapter shape and placement, as PEFT's `LoraConfig` names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
    /// Module names or suffixes (`q_proj`, `c_attn`), or `all-linear`.
    pub targets: Vec<String>,
    /// Scale `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub use_rslora: bool,
}

impl LoraSettings {
    /// PEFT's defaults where not given: alpha = 2 × rank, targets q_proj/v_proj (GPT-2: c_attn).
    pub fn new(
        rank: usize,
        alpha: Option<f64>,
        targets: Option<Vec<String>>,
        family: &str,
    ) -> Self {
        Self {
            rank,
            alpha: alpha.unwrap_or(2.0 * rank as f64),
            targets: targets.unwrap_or_else(|| match family {
                "gpt2" => vec!["c_attn".into()],
                _ => vec!["q_proj".into(), "v_proj".into()],
            }),
            use_rslora: false,
        }
    }

    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// PEFT's rule: a target matches a module whose name is it or ends with `.` + it.
    fn matches(&self, module: &str) -> bool {
        self.targets
            .iter()
            .any(|t| t == "all-linear" || module == t || module.ends_with(&format!(".{t}")))
    }
}

fn seed_for(name: &str, seed: u64) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    }) ^ seed
}

/// Freeze every base weight and attach fresh adapters (B = 0: the model is unchanged) to the
/// targeted projections.
pub fn attach(
    model: CausalLm,
    settings: &LoraSettings,
    seed: u64,
    device: &Device,
) -> Result<CausalLm> {
    if settings.rank == 0 {
        return Err(Error::Invalid("--lora-rank must be at least 1".into()));
    }
    let mut model = model.no_grad();
    let mut names = Vec::new();
    let mut attached = 0;
    for (name, projection) in model.projections_mut() {
        if settings.matches(&name) {
            let [d_in, d_out] = projection.dims();
            projection.lora = Some(LowRank::fresh(
                d_in,
                d_out,
                settings.rank,
                settings.scale(),
                seed_for(&name, seed),
                device,
            ));
            attached += 1;
        }
        names.push(name.rsplit('.').next().unwrap_or_default().to_string());
    }
    if attached == 0 {
        names.sort();
        names.dedup();
        return Err(Error::Invalid(format!(
            "no module matches the LoRA targets {:?}; this model has: {}",
            settings.targets,
            names.join(", ")
        )));
    }
    Ok(model)
}

/// The model with every adapter removed (the frozen base).
pub fn strip(mut model: CausalLm) -> CausalLm {
    for (_, projection) in model.projections_mut() {
        projection.lora = None;
    }
    model
}

/// Adapter factors under PEFT's tensor names (`base_model.model.<module>.lora_A.weight` =
/// `aᵀ`, `lora_B.weight` = `bᵀ`).
pub fn adapter_params(model: &CausalLm) -> Vec<NamedParam> {
    let mut model = model.clone();
    let mut out = Vec::new();
    for (name, projection) in model.projections_mut() {
        if let Some(l) = &projection.lora {
            for (factor, p) in [("lora_A", &l.a), ("lora_B", &l.b)] {
                out.push(NamedParam {
                    name: format!("base_model.model.{name}.{factor}.weight"),
                    id: p.id,
                    tensor: ParamTensor::Matrix {
                        tensor: p.val(),
                        transpose: true,
                    },
                    role: ParamRole::Weight,
                });
            }
        }
    }
    out
}

pub fn has_adapters(model: &CausalLm) -> bool {
    !adapter_params(model).is_empty()
}

/// Parse PEFT's `adapter_config.json`.
pub fn parse_config(text: &str, source: &str) -> Result<LoraSettings> {
    let at = || Location::file(source);
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::input(at().line(e.line()), format!("invalid JSON: {e}")))?;
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = field("peft_type").and_then(Value::as_str)
        && t != "LORA"
    {
        return Err(Error::input(
            at().field("peft_type"),
            format!("`{t}` adapters are not supported (LORA is)"),
        ));
    }
    if field("use_dora").and_then(Value::as_bool) == Some(true) {
        return Err(Error::input(
            at().field("use_dora"),
            "DoRA adapters are not supported",
        ));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if field(key)
            .and_then(Value::as_object)
            .is_some_and(|o| !o.is_empty())
        {
            return Err(Error::input(
                at().field(key),
                "per-module ranks/alphas are not supported",
            ));
        }
    }
    let rank = field("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::input(at().field("r"), "missing or not an integer"))?
        as usize;
    let alpha = field("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| Error::input(at().field("lora_alpha"), "missing or not a number"))?;
    let targets = match field("target_modules") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) if s == "all-linear" => vec![s.clone()],
        Some(Value::String(_)) => {
            return Err(Error::input(
                at().field("target_modules"),
                "regular-expression targets are not supported; list the module names",
            ));
        }
        _ => return Err(Error::input(at().field("target_modules"), "missing")),
    };
    Ok(LoraSettings {
        rank,
        alpha,
        targets,
        use_rslora: field("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Load a PEFT adapter onto `model` (whose base weights are frozen).
pub fn load(
    model: CausalLm,
    config_text: &str,
    weights: &dyn WeightSource,
    label: &str,
    device: &Device,
) -> Result<(CausalLm, LoraSettings)> {
    let settings = parse_config(config_text, &format!("{label}/adapter_config.json"))?;
    let mut model = model.no_grad();
    let mut loaded = 0;
    for (name, projection) in model.projections_mut() {
        let a_name = format!("base_model.model.{name}.lora_A.weight");
        if !weights.contains(&a_name) {
            continue;
        }
        let [d_in, d_out] = projection.dims();
        let b_name = format!("base_model.model.{name}.lora_B.weight");
        projection.lora = Some(LowRank {
            a: weights.matrix(&a_name, [settings.rank, d_in], true, device)?,
            b: weights.matrix(&b_name, [d_out, settings.rank], true, device)?,
            scale: settings.scale(),
        });
        loaded += 1;
    }
    if loaded == 0 {
        return Err(Error::input(
            Location::file(format!("{label}/adapter_model.safetensors")),
            "no lora_A/lora_B tensor matches a module of this model",
        ));
    }
    Ok((model, settings))
}

/// `adapter_config.json` and `adapter_model.safetensors` as PEFT writes them.
pub async fn export(
    model: &CausalLm,
    settings: &LoraSettings,
    family: &str,
    base_model: &str,
) -> Result<ExportedFiles> {
    let mut writer = TensorWriter::default();
    for param in adapter_params(model) {
        writer.add(param.name.clone(), param.to_host().await?);
    }
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": 0.0,
        "target_modules": settings.targets,
        "bias": "none",
        // GPT-2's Conv1D stores [in, out]; PEFT needs to know to merge it.
        "fan_in_fan_out": family == "gpt2",
        "use_rslora": settings.use_rslora,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    Ok(ExportedFiles {
        files: vec![
            (
                "adapter_config.json".into(),
                serde_json::to_vec_pretty(&config).expect("JSON value serializes"),
            ),
            ("adapter_model.safetensors".into(), writer.to_bytes()?),
        ],
    })
}
