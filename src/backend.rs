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

/// Which wgpu adapter to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpu {
    /// wgpu's default (a high-performance adapter if there is one).
    Default,
    /// The discrete GPU of this index (0 is the first); an error if there is none.
    Discrete(usize),
    /// The discrete GPU of this index if there is one, else the default adapter: what each
    /// process of a data-parallel job takes (its rank on its host), so that ranks spread over a
    /// machine's GPUs and share its one GPU otherwise.
    Spread(usize),
}

/// The wgpu device of a discrete GPU (`index`) or the default adapter, and whether it is a
/// software renderer. A wgpu runtime is initialized once per adapter and process, so every later
/// request gets the same device (or error).
#[cfg(not(target_arch = "wasm32"))]
fn native_wgpu(index: Option<usize>) -> std::result::Result<(SelectedDevice, bool), String> {
    type Found = std::result::Result<(SelectedDevice, bool), String>;
    static WGPU: std::sync::Mutex<Vec<(Option<usize>, Found)>> = std::sync::Mutex::new(Vec::new());
    let mut known = WGPU.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, found)) = known.iter().find(|(i, _)| *i == index) {
        return found.clone();
    }
    let found = (|| {
        let options = match index {
            Some(i) => Device::wgpu_options().device_kind(burn::tensor::DeviceKind::DiscreteGpu(i)),
            None => Device::wgpu_options(),
        };
        let (device, setup) = options.init_with_setup().map_err(|e| match index {
            Some(i) => format!("no usable wgpu adapter for discrete GPU {i}: {e}"),
            None => format!("no usable wgpu adapter: {e}"),
        })?;
        let selected = SelectedDevice {
            description: describe(&setup),
            device,
            fallback_reason: None,
        };
        Ok((selected, is_software(&setup.adapter.get_info())))
    })();
    known.push((index, found.clone()));
    found
}

/// `gpu`'s wgpu device (see [`Gpu`]).
#[cfg(not(target_arch = "wasm32"))]
fn wgpu_for(gpu: Gpu) -> std::result::Result<(SelectedDevice, bool), String> {
    match gpu {
        Gpu::Default => native_wgpu(None),
        Gpu::Discrete(i) => native_wgpu(Some(i)),
        Gpu::Spread(i) => native_wgpu(Some(i)).or_else(|_| {
            native_wgpu(None).map(|(mut selected, software)| {
                selected.description += &format!(" (no discrete GPU {i}: the default adapter)");
                (selected, software)
            })
        }),
    }
}

/// Native selection. `Auto` takes a hardware wgpu adapter and otherwise the CPU backend, saying
/// why in `fallback_reason`: no adapter, or only a software renderer (which `Wgpu` still takes).
#[cfg(not(target_arch = "wasm32"))]
pub fn select(choice: BackendChoice) -> Result<SelectedDevice> {
    select_on(choice, Gpu::Default)
}

/// [`select`], with wgpu on the adapter `gpu` names. The CPU backend has one device and
/// ignores it.
#[cfg(not(target_arch = "wasm32"))]
pub fn select_on(choice: BackendChoice, gpu: Gpu) -> Result<SelectedDevice> {
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
        // A GPU that is not there is a setting to change, not a broken device.
        BackendChoice::Wgpu => wgpu_for(gpu)
            .map(|(selected, _)| selected)
            .map_err(|reason| match gpu {
                Gpu::Discrete(_) => Error::setting(
                    "device_index",
                    format!("{reason} (0 is the first discrete GPU)"),
                ),
                _ => Error::Device(reason),
            }),
        BackendChoice::Auto => Ok(match wgpu_for(gpu) {
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
