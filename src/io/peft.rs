//! LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors` loaded
//! onto a model, or written from one. (The adapters themselves are `model/lora.rs`.)

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::Device;
use serde_json::{Value, json};

use super::bundle::ExportedFiles;
use super::model_dir::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use super::safetensors::{FileBytes, SafetensorsSource, TensorWriter};
use crate::error::{Error, Location, Result};
use crate::model::CausalLm;
use crate::model::config::Family;
use crate::model::lora::{LoraSettings, LowRank};
use crate::model::weights::{WeightSource, WithParamIds};

/// The two files of a PEFT adapter, read (natively from a folder, or from a checkpoint).
pub struct AdapterFiles {
    /// Names the adapter in errors (its folder).
    pub label: String,
    pub config_json: String,
    pub weights: Box<dyn WeightSource>,
}

impl AdapterFiles {
    /// An adapter from exported files (`adapter_config.json`, `adapter_model.safetensors`).
    pub fn from_files(label: &str, files: ExportedFiles) -> Result<Self> {
        let mut config_json = None;
        let mut weights = None;
        for (name, bytes) in files.files {
            match name.as_str() {
                ADAPTER_CONFIG_FILE => {
                    config_json = Some(String::from_utf8(bytes).map_err(|_| {
                        Error::input(
                            Location::file(format!("{label}/{name}")),
                            "is not UTF-8 text",
                        )
                    })?)
                }
                ADAPTER_WEIGHTS_FILE => weights = Some(bytes),
                _ => {}
            }
        }
        let missing = |name: &str| {
            Error::input(
                Location::file(format!("{label}/{name}")),
                "missing from the adapter",
            )
        };
        let path = format!("{label}/{ADAPTER_WEIGHTS_FILE}");
        let weights = SafetensorsSource::new(
            path.clone(),
            vec![(
                path,
                FileBytes::Owned(weights.ok_or_else(|| missing(ADAPTER_WEIGHTS_FILE))?),
            )],
        )?;
        Ok(Self {
            label: label.to_string(),
            config_json: config_json.ok_or_else(|| missing(ADAPTER_CONFIG_FILE))?,
            weights: Box::new(weights),
        })
    }
}

/// PEFT's tensor name for a model-level adapter name (`<module>.lora_A.weight`).
pub fn peft_name(adapter_param: &str) -> String {
    format!("base_model.model.{adapter_param}")
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
    let settings = LoraSettings {
        rank,
        alpha,
        targets,
        use_rslora: field("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    // The same checks as fresh adapters, named as PEFT's fields in this file.
    settings.validate().map_err(|e| match e {
        Error::Setting { field, message } => {
            let key = match field.as_str() {
                "lora_rank" => "r",
                "lora_targets" => "target_modules",
                other => other,
            };
            Error::input(at().field(key), message)
        }
        other => other,
    })?;
    Ok(settings)
}

/// Load a PEFT adapter onto `model` (whose base weights are frozen). `param_ids`: the ids a
/// checkpoint recorded for the adapter's tensors, by PEFT name.
pub fn load(
    model: CausalLm,
    adapter: &AdapterFiles,
    param_ids: Option<&HashMap<String, u64>>,
    device: &Device,
) -> Result<(CausalLm, LoraSettings)> {
    let label = &adapter.label;
    let settings = parse_config(
        &adapter.config_json,
        &format!("{label}/{ADAPTER_CONFIG_FILE}"),
    )?;
    let with_ids;
    let weights: &dyn WeightSource = match param_ids {
        Some(ids) => {
            with_ids = WithParamIds {
                inner: adapter.weights.as_ref(),
                ids,
            };
            &with_ids
        }
        None => adapter.weights.as_ref(),
    };
    let mut model = model.no_grad();
    let mut loaded = 0;
    for (name, projection) in model.projections_mut() {
        let a_name = peft_name(&format!("{name}.lora_A.weight"));
        if !weights.contains(&a_name) {
            continue;
        }
        let [d_in, d_out] = projection.dims();
        let b_name = peft_name(&format!("{name}.lora_B.weight"));
        projection.lora = Some(LowRank {
            a: weights.matrix(&a_name, [settings.rank, d_in], true, device)?,
            b: weights.matrix(&b_name, [d_out, settings.rank], true, device)?,
            scale: settings.scale(),
        });
        loaded += 1;
    }
    if loaded == 0 {
        return Err(Error::input(
            Location::file(format!("{label}/{ADAPTER_WEIGHTS_FILE}")),
            "no lora_A/lora_B tensor matches a module of this model",
        ));
    }
    Ok((model, settings))
}

/// `adapter_config.json` and `adapter_model.safetensors` as PEFT writes them.
pub async fn export(
    model: &CausalLm,
    settings: &LoraSettings,
    family: Family,
    base_model: &str,
) -> Result<ExportedFiles> {
    let mut writer = TensorWriter::default();
    for param in model.adapter_params() {
        writer.add(peft_name(&param.name), param.to_host().await?);
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
        "fan_in_fan_out": family == Family::Gpt2,
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
                ADAPTER_CONFIG_FILE.into(),
                serde_json::to_vec_pretty(&config).expect("JSON value serializes"),
            ),
            (ADAPTER_WEIGHTS_FILE.into(), writer.to_bytes()?),
        ],
    })
}
