//! Reading and writing safetensors weights, one tensor at a time.
//!
//! Reading never holds more than the file bytes (memory-mapped natively) plus one tensor converted
//! to f32; writing streams tensors from the device into one buffer per output file.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Location, Result};

/// One tensor on the host, converted to f32.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Swap the two axes of a matrix (Hugging Face `nn.Linear` stores `[out, in]`, burn `[in, out]`).
    pub fn transposed(&self) -> HostTensor {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        let mut data = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        HostTensor {
            shape: vec![cols, rows],
            data,
        }
    }

    pub fn into_param<const D: usize>(self, device: &Device) -> Param<Tensor<D>> {
        Param::from_data(TensorData::new(self.data, self.shape), device)
    }

    fn into_param_with_id<const D: usize>(
        self,
        id: Option<ParamId>,
        device: &Device,
    ) -> Param<Tensor<D>> {
        let mut param = self.into_param(device);
        if let Some(id) = id {
            param.id = id;
        }
        param
    }
}

/// Anything that hands out named tensors: one safetensors file, a sharded set, a fresh random
/// initialization.
pub trait WeightSource {
    /// A label for error messages (the file or directory).
    fn label(&self) -> &str;
    fn contains(&self, name: &str) -> bool;
    fn read(&self, name: &str) -> Result<HostTensor>;

    /// The id the parameter loaded from `name` must have (a resumed run's optimizer state is keyed
    /// by parameter id); `None`: a fresh one.
    fn param_id(&self, _name: &str) -> Option<ParamId> {
        None
    }

    /// A vector parameter of `len` elements.
    fn vector(&self, name: &str, len: usize, device: &Device) -> Result<Param<Tensor<1>>> {
        Ok(self
            .read_shaped(name, &[len])?
            .into_param_with_id(self.param_id(name), device))
    }

    /// A matrix parameter stored as `shape`, transposed on load when `transpose`.
    fn matrix(
        &self,
        name: &str,
        shape: [usize; 2],
        transpose: bool,
        device: &Device,
    ) -> Result<Param<Tensor<2>>> {
        let tensor = self.read_shaped(name, &shape)?;
        let tensor = if transpose {
            tensor.transposed()
        } else {
            tensor
        };
        Ok(tensor.into_param_with_id(self.param_id(name), device))
    }

    /// Read a tensor and check its shape, naming both in the error.
    fn read_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let tensor = self.read(name)?;
        if tensor.shape != shape {
            return Err(Error::input(
                Location::file(self.label()).field(name),
                format!(
                    "tensor has shape {:?}, config.json implies {:?}",
                    tensor.shape, shape
                ),
            ));
        }
        Ok(tensor)
    }
}

/// Bytes of a safetensors file: owned (browser, tests) or memory-mapped (native CLI).
pub enum FileBytes {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
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
        Ok(HostTensor {
            shape: view.shape().to_vec(),
            data,
        })
    }
}

/// Fresh weights for any requested name and shape, as transformers initializes a new model:
/// normal(0, std) for matrices, ones for normalization weights, zeros for biases. Each tensor is
/// seeded from its name, so the result does not depend on the order tensors are asked for.
pub struct RandomInit {
    pub seed: u64,
    pub std: f32,
}

impl WeightSource for RandomInit {
    fn label(&self) -> &str {
        "random initialization"
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        Err(Error::Invalid(format!(
            "random initialization needs the shape of `{name}`"
        )))
    }

    fn read_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let count = shape.iter().product();
        let data = if name.ends_with("bias") {
            vec![0.0; count]
        } else if shape.len() == 1 {
            vec![1.0; count]
        } else {
            // FNV-1a: a hash that is stable across platforms and Rust versions.
            let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let mut rng = rand::rngs::StdRng::seed_from_u64(hash ^ self.seed);
            let normal = rand_distr::Normal::new(0.0, self.std).expect("std is positive");
            (0..count).map(|_| normal.sample(&mut rng)).collect()
        };
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }
}

/// Another source whose parameters get the ids recorded in a checkpoint.
pub struct WithParamIds<'a> {
    pub inner: &'a dyn WeightSource,
    pub ids: &'a std::collections::HashMap<String, u64>,
}

impl WeightSource for WithParamIds<'_> {
    fn label(&self) -> &str {
        self.inner.label()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn read(&self, name: &str) -> Result<HostTensor> {
        self.inner.read(name)
    }
    fn read_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.inner.read_shaped(name, shape)
    }
    fn param_id(&self, name: &str) -> Option<ParamId> {
        self.ids.get(name).map(|&id| ParamId::from(id))
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

/// Read a float tensor back to the host asynchronously (a synchronous read panics in browsers).
pub async fn to_host<const D: usize>(tensor: Tensor<D>) -> Result<HostTensor> {
    let shape = tensor.dims().to_vec();
    let data = tensor
        .into_data_async()
        .await
        .map_err(|e| Error::Readback(format!("{e:?}")))?;
    let data = data
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Readback(format!("{e:?}")))?;
    Ok(HostTensor { shape, data })
}
