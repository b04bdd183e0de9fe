//! Choosing the compute device: a wgpu adapter (Vulkan, Metal, DX12, WebGPU; lavapipe counts), or
//! natively the pure-Rust CPU backend.

use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// wgpu when an adapter exists, else the CPU backend.
    Auto,
    Wgpu,
    Cpu,
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            "cpu" | "flex" => Ok(Self::Cpu),
            other => Err(Error::setting(
                "backend",
                format!("unknown backend `{other}` (auto, wgpu or cpu)"),
            )),
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
        })
    }
}

/// A ready device and a one-line description of it.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    pub description: String,
    /// Why `Auto` fell back to the CPU, for the shell to show.
    pub fallback_reason: Option<String>,
}

fn describe(setup: &burn::tensor::wgpu::WgpuSetup) -> String {
    let info = setup.adapter.get_info();
    // Browsers hide the adapter's name; say at least what it is.
    let name = if info.name.is_empty() {
        [info.driver.as_str(), info.driver_info.as_str()]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or("adapter name hidden by the browser")
    } else {
        info.name.as_str()
    };
    format!("wgpu: {name} ({:?})", info.backend)
}

/// Initialize wgpu asynchronously: the only way in a browser, and fine natively.
pub async fn init_wgpu_async() -> Result<SelectedDevice> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map_err(|e| Error::Device(format!("no usable WebGPU/wgpu adapter: {e}")))?;
    Ok(SelectedDevice {
        description: describe(&setup),
        device,
        fallback_reason: None,
    })
}

/// Native selection. `Auto` falls back to the CPU, saying why in `fallback_reason`.
#[cfg(not(target_arch = "wasm32"))]
pub fn select(choice: BackendChoice) -> Result<SelectedDevice> {
    let cpu = || SelectedDevice {
        device: Device::flex(),
        description: format!(
            "cpu (flex, {} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        fallback_reason: None,
    };
    match choice {
        BackendChoice::Cpu => Ok(cpu()),
        BackendChoice::Wgpu => {
            let (device, setup) = Device::wgpu_options()
                .init_with_setup()
                .map_err(|e| Error::Device(format!("no usable wgpu adapter: {e}")))?;
            Ok(SelectedDevice {
                description: describe(&setup),
                device,
                fallback_reason: None,
            })
        }
        BackendChoice::Auto => match select(BackendChoice::Wgpu) {
            Ok(selected) => Ok(selected),
            Err(e) => Ok(SelectedDevice {
                fallback_reason: Some(e.to_string()),
                ..cpu()
            }),
        },
    }
}
