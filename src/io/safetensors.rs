//! Reading and writing safetensors weights, one tensor at a time.
//!
//! Reading never holds more than the file bytes (memory-mapped natively) plus one tensor converted
//! to f32; writing streams tensors from the device into one buffer per output file.

use std::collections::{BTreeMap, HashMap};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Location, Result};
use crate::model::weights::{HostTensor, WeightSource};

/// Bytes of a safetensors file: owned (browser, tests) or memory-mapped (native CLI).
pub enum FileBytes {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
}

impl FileBytes {
    /// Lets the OS drop the pages of `part` (a slice of these bytes) once it has been copied:
    /// a memory-mapped file would otherwise stay resident beside the tensors made from it,
    /// doubling the peak memory of loading. Owned bytes stay as they are.
    fn release(&self, part: &[u8]) {
        #[cfg(all(unix, not(target_arch = "wasm32")))]
        if let FileBytes::Mapped(map) = self {
            let offset = part.as_ptr() as usize - map.as_ptr() as usize;
            // SAFETY: the map is a read-only view of a file: after MADV_DONTNEED a read of
            // these pages faults them in from the file again, with the same bytes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, part.len())
            };
        }
        #[cfg(not(all(unix, not(target_arch = "wasm32"))))]
        let _ = part;
    }
}

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            FileBytes::Owned(v) => v,
            #[cfg(not(target_arch = "wasm32"))]
            FileBytes::Mapped(m) => m,
        }
    }
}

impl FileBytes {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn map(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
        // SAFETY: the file is opened read-only and we never hand out references past its life;
        // a concurrent writer truncating it is the only hazard, as with any mmap reader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path.display(), e))?;
        Ok(FileBytes::Mapped(map))
    }
}

/// One or more safetensors files (sharded checkpoints list theirs in `model.safetensors.index.json`).
pub struct SafetensorsSource {
    label: String,
    files: Vec<(String, FileBytes)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// `files` are (name for errors, bytes). Every tensor name must be unique across files.
    pub fn new(label: impl Into<String>, files: Vec<(String, FileBytes)>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, (name, bytes)) in files.iter().enumerate() {
            let (_, metadata) = SafeTensors::read_metadata(bytes.as_ref()).map_err(|e| {
                Error::input(Location::file(name), format!("not a safetensors file: {e}"))
            })?;
            for tensor_name in metadata.tensors().keys() {
                index.insert(tensor_name.clone(), i);
            }
        }
        Ok(Self {
            label: label.into(),
            files,
            index,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }
}

impl WeightSource for SafetensorsSource {
    fn label(&self) -> &str {
        &self.label
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let missing = || {
            Error::input(
                Location::file(&self.label).field(name),
                "tensor missing from the weights",
            )
        };
        let &file = self.index.get(name).ok_or_else(missing)?;
        let (file_name, bytes) = &self.files[file];
        let err = |e: safetensors::SafeTensorError| {
            Error::input(Location::file(file_name).field(name), e.to_string())
        };
        let st = SafeTensors::deserialize(bytes.as_ref()).map_err(err)?;
        let view = st.tensor(name).map_err(err)?;
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::input(
                    Location::file(file_name).field(name),
                    format!("dtype {other:?} is not supported (F32, F16, BF16 are)"),
                ));
            }
        };
        bytes.release(raw);
        Ok(HostTensor {
            shape: view.shape().to_vec(),
            data,
        })
    }
}

/// Tensors gathered for writing, keyed by Hugging Face name.
#[derive(Default)]
pub struct TensorWriter {
    tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
}

impl TensorWriter {
    pub fn add(&mut self, name: impl Into<String>, tensor: HostTensor) {
        let bytes = tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.insert(name.into(), (tensor.shape, bytes));
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Serialize to safetensors bytes with the `format: pt` metadata transformers expects.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(name, (shape, bytes))| {
                let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .expect("shape and byte length agree by construction");
                (name.as_str(), view)
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::Invalid(format!("serializing safetensors: {e}")))
    }
}
