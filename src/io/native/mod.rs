//! What only a native process can do: files, memory maps, and downloads from the Hub.

pub mod files;
pub mod hub;

use std::path::PathBuf;

use crate::error::Result;
use crate::io::hub_ref::HubRef;
pub use hub::HubProgress;

/// A model reference as a local path: `hf:` references are downloaded (once) into the cache,
/// anything else is a path.
pub fn resolve_model(spec: &str, progress: &mut dyn FnMut(HubProgress)) -> Result<PathBuf> {
    match HubRef::parse(spec) {
        Some(hub) => hub::download(&hub?, progress),
        None => Ok(PathBuf::from(spec)),
    }
}
