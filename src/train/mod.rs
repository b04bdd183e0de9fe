//! Training: options and their defaults, the optimizers, the DPO and SFT objectives and their
//! metrics, the one async training loop, checkpoints, the built-in demo, and [`run`], which
//! assembles a run from what a user asked for. The loss and the loop know nothing of files.

pub mod checkpoint;
pub mod clipping;
pub mod collective;
pub mod demo;
pub mod dpo;
mod fused_adamw;
pub mod losses;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod optimizer;
pub mod options;
pub mod reference_free;
pub mod run;
pub mod sft;
pub mod trainer;
mod wgpu_kernels;
