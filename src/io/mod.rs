//! Model files in and out: Hugging Face folders (safetensors, sharded or not), GGUF files, PEFT
//! adapters, `hf:` references, and exports. Works on bytes and texts so the browser shares it;
//! `native/` adds what needs a filesystem or a network (paths, memory maps, Hub downloads).

pub mod bundle;
pub mod gguf;
pub mod hub_ref;
pub mod model_dir;
pub mod peft;
pub mod safetensors;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;
