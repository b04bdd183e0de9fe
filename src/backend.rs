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

/// Whether wgpu's adapter is a software renderer (llvmpipe, lavapipe, SwiftShader, WARP): on
/// those the CPU backend is many times faster.
#[cfg(not(target_arch = "wasm32"))]
fn is_software(info: &burn::tensor::wgpu::wgpu::AdapterInfo) -> bool {
    info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu
}

/// This process's wgpu device and whether it is a software renderer. A wgpu runtime is
/// initialized once per process, so every later request gets the same device (or error).
#[cfg(not(target_arch = "wasm32"))]
fn native_wgpu() -> std::result::Result<(SelectedDevice, bool), String> {
    static WGPU: std::sync::OnceLock<std::result::Result<(SelectedDevice, bool), String>> =
        std::sync::OnceLock::new();
    WGPU.get_or_init(|| {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| format!("no usable wgpu adapter: {e}"))?;
        let selected = SelectedDevice {
            description: describe(&setup),
            device,
            fallback_reason: None,
        };
        Ok((selected, is_software(&setup.adapter.get_info())))
    })
    .clone()
}

/// Native selection. `Auto` takes a hardware wgpu adapter and otherwise the CPU backend, saying
/// why in `fallback_reason`: no adapter, or only a software renderer (which `Wgpu` still takes).
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
        BackendChoice::Wgpu => native_wgpu()
            .map(|(selected, _)| selected)
            .map_err(Error::Device),
        BackendChoice::Auto => Ok(match native_wgpu() {
            Ok((selected, false)) => selected,
            Ok((software, true)) => SelectedDevice {
                fallback_reason: Some(format!(
                    "the only wgpu adapter is a software renderer ({}), slower than the CPU \
                     backend (backend `wgpu` uses it anyway)",
                    software.description
                )),
                ..cpu()
            },
            Err(reason) => SelectedDevice {
                fallback_reason: Some(reason),
                ..cpu()
            },
        }),
    }
}
