//! The GGUF container: header, metadata and tensor table of a v2/v3 file, every size checked
//! against the bytes, and a tensor's data handed to `quant.rs` when it is read.

use std::collections::HashMap;

use super::quant::dequantize;
use crate::error::{Error, Location, Result};
use crate::io::safetensors::FileBytes;
use crate::model::weights::HostTensor;

/// The ggml tensor types this reader dequantizes (named as ggml names them).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
        }
    }
}

/// ggml's name for a type id, for error messages.
fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    match NAMES.get(id as usize) {
        Some(name) => format!("{name} (ggml type {id})"),
        None => format!("ggml type {id}"),
    }
}

const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any integer type (u8..u64, i8..i64), widened.
    Int(i128),
    /// f32 (widened exactly, as Python does) or f64.
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::Float(v) => Some(*v),
            MetaValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the fastest-moving (the row length).
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    /// From the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    /// Shape in Hugging Face / torch order (slowest first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file: metadata, tensor table, and the bytes.
pub struct GgufFile {
    pub label: String,
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    bytes: FileBytes,
}

/// A bounds-checked little-endian reader over the header.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    label: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> Error {
        Error::input(
            Location::file(self.label),
            format!(
                "truncated or corrupt GGUF header at byte {} (reading {what})",
                self.pos
            ),
        )
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.err(what))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// A u64 count or size that must fit in memory.
    fn len(&mut self, what: &str) -> Result<usize> {
        let v = self.u64(what)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= self.bytes.len())
            .ok_or_else(|| self.err(what))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| {
            Error::input(
                Location::file(self.label),
                format!("{what} is not valid UTF-8"),
            )
        })
    }

    fn value(&mut self, value_type: u32, key: &str) -> Result<MetaValue> {
        let what = &format!("the value of `{key}`");
        Ok(match value_type {
            0 => MetaValue::Int(self.array::<1>(what)?[0] as i128),
            1 => MetaValue::Int(self.array::<1>(what)?[0] as i8 as i128),
            2 => MetaValue::Int(u16::from_le_bytes(self.array(what)?) as i128),
            3 => MetaValue::Int(i16::from_le_bytes(self.array(what)?) as i128),
            4 => MetaValue::Int(u32::from_le_bytes(self.array(what)?) as i128),
            5 => MetaValue::Int(i32::from_le_bytes(self.array(what)?) as i128),
            6 => MetaValue::Float(f32::from_le_bytes(self.array(what)?) as f64),
            7 => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetaValue::String(self.string(what)?),
            9 => {
                let element_type = self.u32(what)?;
                let count = self.len(what)?;
                if element_type == 9 {
                    return Err(Error::input(
                        Location::file(self.label).field(key),
                        "nested metadata arrays are not supported",
                    ));
                }
                // Every element takes at least one byte: never reserve more than the file holds.
                let mut items = Vec::with_capacity(count.min(self.remaining()));
                for _ in 0..count {
                    items.push(self.value(element_type, key)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::Int(u64::from_le_bytes(self.array(what)?) as i128),
            11 => MetaValue::Int(i64::from_le_bytes(self.array(what)?) as i128),
            12 => MetaValue::Float(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(Error::input(
                    Location::file(self.label).field(key),
                    format!("unknown metadata value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Parse the header, metadata and tensor table of a GGUF v2/v3 file. `label` names the file in
    /// errors.
    pub fn parse(label: impl Into<String>, bytes: FileBytes) -> Result<Self> {
        let label = label.into();
        let data = bytes.as_ref();
        let mut c = Cursor {
            bytes: data,
            pos: 0,
            label: &label,
        };
        if c.take(4, "the magic").ok() != Some(b"GGUF".as_slice()) {
            return Err(Error::input(
                Location::file(&label),
                "not a GGUF file (it does not start with `GGUF`)",
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            let hint = if version.swap_bytes() <= 3 {
                " (a big-endian file; only little-endian GGUF is supported)"
            } else {
                ""
            };
            return Err(Error::input(
                Location::file(&label),
                format!("GGUF version {version} is not supported (2 and 3 are){hint}"),
            ));
        }
        let tensor_count = c.len("the tensor count")?;
        let kv_count = c.len("the metadata count")?;
        // Counts are checked against the file's length (`len`), and reservations against what is
        // left of it: a small file cannot ask for a large allocation.
        let mut metadata = HashMap::with_capacity(kv_count.min(c.remaining() / 13));
        for _ in 0..kv_count {
            let key = c.string("a metadata key")?;
            let value_type = c.u32("a metadata type")?;
            let value = c.value(value_type, &key)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count.min(c.remaining() / 24));
        for _ in 0..tensor_count {
            let name = c.string("a tensor name")?;
            let what = format!("the tensor info of `{name}`");
            let n_dims = c.u32(&what)? as usize;
            if n_dims > 4 {
                return Err(Error::input(
                    Location::file(&label).field(&name),
                    format!("{n_dims} dimensions (GGUF allows at most 4)"),
                ));
            }
            let dims = (0..n_dims)
                .map(|_| c.len(&what))
                .collect::<Result<Vec<_>>>()?;
            let ggml_type = c.u32(&what)?;
            let offset = c.len(&what)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| {
                    Error::input(
                        Location::file(&label).field("general.alignment"),
                        "not a power of two",
                    )
                })? as usize,
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let file = Self {
            label,
            version,
            metadata,
            tensors,
            data_start,
            bytes,
        };
        // Check every tensor's extent now, so a truncated file fails at load, naming the tensor.
        // (A type this reader cannot dequantize is reported when that tensor is read.)
        for t in &file.tensors {
            if GgmlType::from_id(t.ggml_type).is_some() {
                file.raw(t)?;
            }
        }
        Ok(file)
    }

    pub(super) fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub(super) fn meta_err(&self, key: &str, message: impl Into<String>) -> Error {
        Error::input(Location::file(&self.label).field(key), message)
    }

    pub(super) fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        self.meta(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.meta_err(key, "not an unsigned integer"))
            })
            .transpose()
    }

    pub(super) fn meta_usize_required(&self, key: &str) -> Result<usize> {
        self.meta_u64(key)?
            .map(|v| v as usize)
            .ok_or_else(|| self.meta_err(key, "missing from the GGUF metadata"))
    }

    pub(super) fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        self.meta(key)
            .map(|v| v.as_f64().ok_or_else(|| self.meta_err(key, "not a number")))
            .transpose()
    }

    pub(super) fn meta_str(&self, key: &str) -> Result<Option<&str>> {
        self.meta(key)
            .map(|v| v.as_str().ok_or_else(|| self.meta_err(key, "not a string")))
            .transpose()
    }

    pub(super) fn meta_bool(&self, key: &str) -> Result<Option<bool>> {
        self.meta(key)
            .map(|v| v.as_bool().ok_or_else(|| self.meta_err(key, "not a bool")))
            .transpose()
    }

    pub(super) fn meta_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.meta(key) else {
            return Ok(None);
        };
        let err = || self.meta_err(key, "not an array of strings");
        v.as_array()
            .ok_or_else(err)?
            .iter()
            .map(|s| s.as_str().ok_or_else(err))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The raw bytes of a tensor, checked against the file's length.
    fn raw(&self, t: &TensorInfo) -> Result<&[u8]> {
        let err = |m: String| Error::input(Location::file(&self.label).field(&t.name), m);
        let ty = GgmlType::from_id(t.ggml_type).ok_or_else(|| {
            err(format!(
                "tensor type {} is not supported (supported: {SUPPORTED_TYPES})",
                ggml_type_name(t.ggml_type)
            ))
        })?;
        let (block_elems, block_bytes) = ty.block();
        if t.dims.first().is_some_and(|&d| d % block_elems != 0) {
            return Err(err(format!(
                "row length {} is not a multiple of the {block_elems}-element blocks of {}",
                t.dims[0],
                ggml_type_name(t.ggml_type)
            )));
        }
        let elements = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if let Some(n) = elements
            && n % block_elems != 0
        {
            return Err(err(format!(
                "{n} elements (shape {:?}) are not whole {block_elems}-element blocks of {}",
                t.dims,
                ggml_type_name(t.ggml_type)
            )));
        }
        let nbytes = elements.and_then(|n| (n / block_elems).checked_mul(block_bytes));
        let start = self.data_start.checked_add(t.offset);
        let data = self.bytes.as_ref();
        match (start, nbytes) {
            (Some(start), Some(n)) if start.checked_add(n).is_some_and(|e| e <= data.len()) => {
                Ok(&data[start..start + n])
            }
            _ => Err(err(format!(
                "tensor data (offset {}, shape {:?}, {}) runs past the end of the file ({} bytes); \
                 is the file truncated?",
                t.offset,
                t.shape(),
                ggml_type_name(t.ggml_type),
                data.len()
            ))),
        }
    }

    /// One tensor dequantized to f32, in its stored (GGUF) element order, with the torch-order
    /// shape.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<HostTensor> {
        let raw = self.raw(t)?;
        let ty = GgmlType::from_id(t.ggml_type).expect("checked by raw()");
        Ok(HostTensor {
            shape: t.shape(),
            data: dequantize(ty, raw, t.elements()),
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    /// A small GGUF v3 file built by hand: header, metadata, one Q8_0 tensor, one F32 tensor.
    fn tiny_gguf(tensor_type: u32) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.extend((v.len() as u64).to_le_bytes());
            out.extend(v.as_bytes());
        }
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes()); // tensors
        b.extend(2u64.to_le_bytes()); // kv
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "a");
        s(&mut b, "b");
        // tensor 0: [32, 2] of `tensor_type` at offset 0
        s(&mut b, "blk.0.ffn_up.weight");
        b.extend(2u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(tensor_type.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        // tensor 1: [4] f32 at offset 96 (after 2 Q8_0 blocks = 68 bytes, aligned to 32)
        s(&mut b, "output_norm.weight");
        b.extend(1u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(96u64.to_le_bytes());
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for row in 0..2 {
            b.extend(h(1.0 + row as f32));
            b.extend((0..32).map(|i| i as u8));
        }
        b.resize(b.len() + (96 - 68), 0);
        b.extend([1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()));
        b
    }

    #[test]
    fn parses_a_hand_made_file() {
        let file = GgufFile::parse("tiny.gguf", FileBytes::Owned(tiny_gguf(8))).unwrap();
        assert_eq!(file.version, 3);
        assert_eq!(
            file.metadata["general.architecture"].as_str(),
            Some("llama")
        );
        let t = file.tensor("blk.0.ffn_up.weight").unwrap();
        assert_eq!(t.shape(), vec![2, 32]);
        let host = file.dequantize(t).unwrap();
        assert_eq!(host.data[33], 2.0);
        assert_eq!(host.data[31], 31.0);
        let norm = file
            .dequantize(file.tensor("output_norm.weight").unwrap())
            .unwrap();
        assert_eq!(norm.data, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn errors_name_file_tensor_and_type() {
        // Q2_K (10): not supported, named with the tensor when it is read.
        let file = GgufFile::parse("m.gguf", FileBytes::Owned(tiny_gguf(10))).unwrap();
        let err = file
            .dequantize(file.tensor("blk.0.ffn_up.weight").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.gguf"), "{err}");
        assert!(err.contains("blk.0.ffn_up.weight"), "{err}");
        assert!(err.contains("Q2_K"), "{err}");
        // Truncated data.
        let mut bytes = tiny_gguf(8);
        bytes.truncate(bytes.len() - 8);
        let err = GgufFile::parse("t.gguf", FileBytes::Owned(bytes))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("output_norm.weight") && err.contains("truncated"),
            "{err}"
        );
        let err = GgufFile::parse("x.gguf", FileBytes::Owned(b"GGUX".to_vec()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("x.gguf") && err.contains("not a GGUF"),
            "{err}"
        );
    }
}
