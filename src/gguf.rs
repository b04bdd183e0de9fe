//! GGUF (llama.cpp's single-file format, v2/v3) as a model source: the file's metadata becomes the
//! Hugging Face `config.json`, `tokenizer.json` and `tokenizer_config.json` that transformers
//! builds from it, and its tensors are handed out under Hugging Face names and layouts, one
//! tensor dequantized to f32 at a time.
//!
//! The file is parsed once (header, metadata, tensor table); tensor data is only touched when a
//! tensor is read, so natively the bytes stay a memory map.
//!
//! What transformers (5.24, `modeling_gguf_pytorch_utils.py`) does with a `llama` or `qwen2`
//! file, and this module mirrors:
//! * GGUF lists dimensions fastest first (`ne[0]` is the row length), so a GGUF `[in, out]` is a
//!   row-major Hugging Face `[out, in]`: the data needs no transposition, only the shape reversed.
//! * llama.cpp's converter interleaves the two rotary halves of every q/k head of a `llama` file
//!   (not of a `qwen2` one); the rows are put back as `LlamaTensorProcessor._reverse_permute_weights` does (see [`unpermute_rope_rows`]).
//! * The tokenizer is byte-level BPE (`tokenizer.ggml.model = gpt2`) or sentencepiece BPE with
//!   byte fallback (`llama`, merges recovered from the scores), with control tokens as special
//!   added tokens and the pre-tokenizer chosen from `tokenizer.ggml.pre`
//!   (`integrations/gguf/gguf_tokenizer_mapping.py`).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::bundle::ModelTexts;
use crate::error::{Error, Location, Result};
use crate::weights::{FileBytes, HostTensor, WeightSource};

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
                let mut items = Vec::with_capacity(count);
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
        let mut metadata = HashMap::with_capacity(kv_count);
        for _ in 0..kv_count {
            let key = c.string("a metadata key")?;
            let value_type = c.u32("a metadata type")?;
            let value = c.value(value_type, &key)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count);
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

    fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn meta_err(&self, key: &str, message: impl Into<String>) -> Error {
        Error::input(Location::file(&self.label).field(key), message)
    }

    fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        self.meta(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.meta_err(key, "not an unsigned integer"))
            })
            .transpose()
    }

    fn meta_usize_required(&self, key: &str) -> Result<usize> {
        self.meta_u64(key)?
            .map(|v| v as usize)
            .ok_or_else(|| self.meta_err(key, "missing from the GGUF metadata"))
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        self.meta(key)
            .map(|v| v.as_f64().ok_or_else(|| self.meta_err(key, "not a number")))
            .transpose()
    }

    fn meta_str(&self, key: &str) -> Result<Option<&str>> {
        self.meta(key)
            .map(|v| v.as_str().ok_or_else(|| self.meta_err(key, "not a string")))
            .transpose()
    }

    fn meta_bool(&self, key: &str) -> Result<Option<bool>> {
        self.meta(key)
            .map(|v| v.as_bool().ok_or_else(|| self.meta_err(key, "not a bool")))
            .transpose()
    }

    fn meta_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
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
        let nbytes = t
            .dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .map(|n| n / block_elems * block_bytes);
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

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantize `n` elements stored as `ty` (ggml's reference formulas, in f32 as the `gguf`
/// Python package computes them).
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(f16)),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        // d (f16), 32 × i8: x·d
        GgmlType::Q8_0 => {
            for block in raw.chunks_exact(34) {
                let d = f16(&block[0..2]);
                out.extend(block[2..].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        // d (f16), 16 bytes: element j < 16 is the low nibble of byte j, element 16 + j the high
        // one; (q - 8)·d
        GgmlType::Q4_0 => {
            for block in raw.chunks_exact(18) {
                let d = f16(&block[0..2]);
                let qs = &block[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        // d, m (f16), 16 bytes as Q4_0: q·d + m
        GgmlType::Q4_1 => {
            for block in raw.chunks_exact(20) {
                let d = f16(&block[0..2]);
                let m = f16(&block[2..4]);
                let qs = &block[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        // d (f16), qh (u32: bit j is the fifth bit of element j), 16 bytes as Q4_0: (q - 16)·d
        GgmlType::Q5_0 => {
            for block in raw.chunks_exact(22) {
                let d = f16(&block[0..2]);
                let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                let qs = &block[6..22];
                let q5 = |j: usize, nib: u8| (nib as u32 | (((qh >> j) & 1) << 4)) as i32 - 16;
                out.extend((0..16).map(|j| q5(j, qs[j] & 0x0F) as f32 * d));
                out.extend((0..16).map(|j| q5(16 + j, qs[j] >> 4) as f32 * d));
            }
        }
        // d, m (f16), qh, 16 bytes: q·d + m
        GgmlType::Q5_1 => {
            for block in raw.chunks_exact(24) {
                let d = f16(&block[0..2]);
                let m = f16(&block[2..4]);
                let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
                let qs = &block[8..24];
                let q5 = |j: usize, nib: u8| nib as u32 | (((qh >> j) & 1) << 4);
                out.extend((0..16).map(|j| q5(j, qs[j] & 0x0F) as f32 * d + m));
                out.extend((0..16).map(|j| q5(16 + j, qs[j] >> 4) as f32 * d + m));
            }
        }
        // d, dmin (f16), 12 bytes of 6-bit scales and mins for 8 sub-blocks of 32, 128 bytes:
        // chunk c of 32 bytes holds sub-block 2c in its low nibbles, 2c + 1 in its high ones;
        // (d·scale)·q - dmin·min
        GgmlType::Q4_K => {
            for block in raw.chunks_exact(144) {
                let (dl, ml) = k_scales(block);
                let qs = &block[16..144];
                for j in 0..8 {
                    let (c, shift) = (j / 2, 4 * (j % 2));
                    out.extend(
                        qs[c * 32..(c + 1) * 32]
                            .iter()
                            .map(|&q| dl[j] * ((q >> shift) & 0x0F) as f32 - ml[j]),
                    );
                }
            }
        }
        // as Q4_K, plus 32 bytes whose bit j is the fifth bit of sub-block j's elements
        GgmlType::Q5_K => {
            for block in raw.chunks_exact(176) {
                let (dl, ml) = k_scales(block);
                let qh = &block[16..48];
                let qs = &block[48..176];
                for j in 0..8 {
                    let (c, shift) = (j / 2, 4 * (j % 2));
                    out.extend((0..32).map(|k| {
                        let q = ((qs[c * 32 + k] >> shift) & 0x0F) | (((qh[k] >> j) & 1) << 4);
                        dl[j] * q as f32 - ml[j]
                    }));
                }
            }
        }
        // 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales (one per 16 elements),
        // d (f16): (d·scale)·(q - 32). Element p: half h = p / 128, then within it the low
        // nibbles of 64 bytes, their high nibbles; the 2-bit pairs of 32 bytes, shifted by 2s.
        GgmlType::Q6_K => {
            for block in raw.chunks_exact(210) {
                let (ql, qh) = (&block[0..128], &block[128..192]);
                let scales = &block[192..208];
                let d = f16(&block[208..210]);
                out.extend((0..256).map(|p| {
                    let (h, r) = (p / 128, p % 128);
                    let low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
                    let high = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
                    let q = (low | (high << 4)) as i32 - 32;
                    (d * (scales[p / 16] as i8) as f32) * q as f32
                }));
            }
        }
    }
    debug_assert_eq!(out.len(), n);
    out
}

/// The 8 sub-block scales `d·sc` and mins `dmin·m` of a Q4_K/Q5_K block (`get_scale_min`):
/// bytes 4..16 hold six-bit values, the first four of each in the low bits of bytes 0..4 / 4..8,
/// the last four split between bytes 8..12 (low bits) and the top bits of bytes 0..8.
fn k_scales(block: &[u8]) -> ([f32; 8], [f32; 8]) {
    let d = f16(&block[0..2]);
    let dmin = f16(&block[2..4]);
    let s = &block[4..16];
    let mut dl = [0.0; 8];
    let mut ml = [0.0; 8];
    for i in 0..4 {
        dl[i] = d * (s[i] & 0x3F) as f32;
        ml[i] = dmin * (s[4 + i] & 0x3F) as f32;
        dl[4 + i] = d * ((s[8 + i] & 0x0F) | ((s[i] >> 2) & 0x30)) as f32;
        ml[4 + i] = dmin * ((s[8 + i] >> 4) | ((s[4 + i] >> 2) & 0x30)) as f32;
    }
    (dl, ml)
}

/// Undo llama.cpp's rotary permutation of q/k projection rows (`[out, in]`, row-major), as
/// transformers' `LlamaTensorProcessor._reverse_permute_weights` does: within each head of
/// `head_dim` rows, llama.cpp stores the rows of the two rotary halves interleaved (row `2i + j`
/// is row `j·head_dim/2 + i` of the Hugging Face head).
pub fn unpermute_rope_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let dst = h * head_dim + j * half + i;
                let src = h * head_dim + 2 * i + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The llama.cpp name of a Hugging Face Llama tensor name.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    let (stem, suffix) = hf.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let base = match stem {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = stem.strip_prefix("model.layers.")?;
            let (layer, module) = rest.split_once('.')?;
            layer.parse::<usize>().ok()?;
            let leaf = match module {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                _ => return None,
            };
            format!("blk.{layer}.{leaf}")
        }
    };
    Some(format!("{base}.{suffix}"))
}

/// The tensors of a GGUF Llama or Qwen2 under Hugging Face names, in Hugging Face layout.
pub struct GgufWeights {
    file: GgufFile,
    /// GGUF tensor name -> index into `file.tensors`
    index: HashMap<String, usize>,
    /// (query heads, key/value heads), for undoing the rotary permutation of a `llama` file.
    rope_permuted_heads: Option<(usize, usize)>,
}

impl GgufWeights {
    /// Tensor names in Hugging Face terms (those this source can map).
    pub fn names(&self) -> Vec<String> {
        self.file
            .tensors
            .iter()
            .filter_map(|t| hf_tensor_name(&t.name))
            .collect()
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

/// The Hugging Face name of a llama.cpp Llama tensor name (inverse of [`gguf_tensor_name`]).
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    let base = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, leaf) = rest.split_once('.')?;
            let module = match leaf {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{module}")
        }
    };
    let hf = format!("{base}.{suffix}");
    (gguf_tensor_name(&hf).as_deref() == Some(gguf)).then_some(hf)
}

impl WeightSource for GgufWeights {
    fn label(&self) -> &str {
        &self.file.label
    }

    fn contains(&self, name: &str) -> bool {
        gguf_tensor_name(name).is_some_and(|g| self.index.contains_key(&g))
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let missing = |gguf: &str| {
            Error::input(
                Location::file(&self.file.label).field(name),
                format!("tensor missing from the GGUF file (looked for `{gguf}`)"),
            )
        };
        let gguf = gguf_tensor_name(name).ok_or_else(|| missing("?"))?;
        let &i = self.index.get(&gguf).ok_or_else(|| missing(&gguf))?;
        let info = &self.file.tensors[i];
        let mut tensor = self.file.dequantize(info).map_err(|e| match e {
            Error::Input { location, message } => {
                Error::input(location, format!("{message} (Hugging Face name `{name}`)"))
            }
            other => other,
        })?;
        let n_head = match self.rope_permuted_heads {
            Some((q_heads, _)) if gguf.contains(".attn_q.") => Some(q_heads),
            Some((_, kv_heads)) if gguf.contains(".attn_k.") => Some(kv_heads),
            _ => None,
        };
        if let Some(n_head) = n_head {
            let rows = tensor.shape[0];
            let cols = tensor.data.len() / rows.max(1);
            if n_head == 0 || rows % (2 * n_head) != 0 {
                return Err(Error::input(
                    Location::file(&self.file.label).field(&gguf),
                    format!("{rows} rows cannot be split into {n_head} rotary heads"),
                ));
            }
            tensor.data = unpermute_rope_rows(&tensor.data, rows, cols, n_head);
        }
        Ok(tensor)
    }
}

/// Read a GGUF file's metadata into the Hugging Face text files transformers builds from it, and
/// its tensors as a [`WeightSource`] for [`crate::bundle::ModelBundle::load`].
pub fn gguf_model_texts_and_weights(
    label: &str,
    bytes: FileBytes,
) -> Result<(ModelTexts, GgufWeights)> {
    let file = GgufFile::parse(label, bytes)?;
    let (config_json, heads) = config_json(&file)?;
    let tokenizer_json = tokenizer_json(&file)?;
    let tokenizer_config_json = tokenizer_config_json(&file)?;
    let texts = ModelTexts {
        label: label.to_string(),
        config_json,
        tokenizer_json,
        tokenizer_config_json: Some(tokenizer_config_json),
        extra_files: Vec::new(),
    };
    let mut file = file;
    // The vocabulary and merges are in the texts now; the weights keep only what reads tensors.
    file.metadata.clear();
    let index = file
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    Ok((
        texts,
        GgufWeights {
            file,
            index,
            rope_permuted_heads: heads,
        },
    ))
}

/// The GGUF architectures read, with their Hugging Face model type and class.
const ARCHITECTURES: [(&str, &str, &str); 2] = [
    ("llama", "llama", "LlamaForCausalLM"),
    ("qwen2", "qwen2", "Qwen2ForCausalLM"),
];

/// `config.json` for `LlamaForCausalLM` or `Qwen2ForCausalLM`, with the keys transformers' GGUF
/// loader sets, and the (query, key/value) head counts when q/k rows carry llama.cpp's rotary
/// permutation (only its `llama` architecture does).
fn config_json(file: &GgufFile) -> Result<(String, Option<(usize, usize)>)> {
    let arch_key = "general.architecture";
    let arch = file
        .meta_str(arch_key)?
        .ok_or_else(|| file.meta_err(arch_key, "missing from the GGUF metadata"))?;
    let Some(&(_, model_type, class)) = ARCHITECTURES.iter().find(|(a, _, _)| *a == arch) else {
        return Err(file.meta_err(
            arch_key,
            format!(
                "architecture `{arch}` is not supported (only `llama` and `qwen2` GGUF files are)"
            ),
        ));
    };
    let is_llama = arch == "llama";
    let key = |k: &str| format!("{arch}.{k}");
    let heads = file.meta_usize_required(&key("attention.head_count"))?;
    let kv_heads = file
        .meta_u64(&key("attention.head_count_kv"))?
        .map_or(heads, |v| v as usize);
    let hidden = file.meta_usize_required(&key("embedding_length"))?;
    let vocab_size = match file.meta_u64(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => file
            .meta("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .map(<[MetaValue]>::len)
            .ok_or_else(|| {
                file.meta_err(
                    &key("vocab_size"),
                    "missing, and there is no `tokenizer.ggml.tokens` to count",
                )
            })?,
    };
    let mut config = Map::new();
    config.insert("architectures".into(), json!([class]));
    config.insert("model_type".into(), json!(model_type));
    config.insert("vocab_size".into(), json!(vocab_size));
    config.insert("hidden_size".into(), json!(hidden));
    config.insert(
        "intermediate_size".into(),
        json!(file.meta_usize_required(&key("feed_forward_length"))?),
    );
    config.insert(
        "num_hidden_layers".into(),
        json!(file.meta_usize_required(&key("block_count"))?),
    );
    config.insert("num_attention_heads".into(), json!(heads));
    config.insert("num_key_value_heads".into(), json!(kv_heads));
    // transformers reads `rope.dimension_count` as a Llama's head size (Qwen2's is implied).
    if is_llama {
        let head_dim = file
            .meta_u64(&key("rope.dimension_count"))?
            .map_or(hidden / heads.max(1), |v| v as usize);
        config.insert("head_dim".into(), json!(head_dim));
    }
    config.insert("hidden_act".into(), json!("silu"));
    config.insert(
        "max_position_embeddings".into(),
        json!(file.meta_u64(&key("context_length"))?.unwrap_or(2048)),
    );
    config.insert(
        "rms_norm_eps".into(),
        json!(
            file.meta_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6)
        ),
    );
    config.insert(
        "rope_parameters".into(),
        json!({
            "rope_theta": file.meta_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            "rope_type": "default",
        }),
    );
    config.insert("attention_dropout".into(), json!(0.0));
    config.insert("initializer_range".into(), json!(0.02));
    config.insert("use_cache".into(), json!(true));
    if is_llama {
        config.insert("attention_bias".into(), json!(false));
        config.insert("mlp_bias".into(), json!(false));
        config.insert("pretraining_tp".into(), json!(1));
    } else {
        // Qwen2's q/k/v biases are part of the architecture; llama.cpp has no sliding window.
        config.insert("use_sliding_window".into(), json!(false));
        config.insert("sliding_window".into(), Value::Null);
    }
    // llama.cpp writes the output projection only when it is not the embedding matrix.
    config.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor("output.weight").is_none()),
    );
    for (gguf, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.unknown_token_id", "unk_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = file.meta_u64(gguf)? {
            config.insert(hf.into(), json!(id));
        }
    }
    let text = serde_json::to_string_pretty(&Value::Object(config)).expect("JSON serializes");
    Ok((text, is_llama.then_some((heads, kv_heads))))
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable Latin-1 bytes stand for
/// themselves, the others are shifted past 255.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("Latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("BMP")
        };
    }
    table
}

const LLAMA3_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` value (`GGUF_PRE_TOKENIZER_SPLITS`);
/// any other value keeps GPT-2's ByteLevel pre-tokenizer.
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// The special token strings transformers names from the metadata (`bos_token` etc.).
fn special_tokens(file: &GgufFile, tokens: &[&str]) -> Result<Vec<(&'static str, Option<String>)>> {
    [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ]
    .into_iter()
    .map(|(name, key)| {
        let token = match file.meta_u64(key)? {
            None => None,
            Some(id) => Some(
                tokens
                    .get(id as usize)
                    .ok_or_else(|| {
                        file.meta_err(
                            key,
                            format!("id {id} is past the vocabulary ({})", tokens.len()),
                        )
                    })?
                    .to_string(),
            ),
        };
        Ok((name, token))
    })
    .collect()
}

fn tokens_of(file: &GgufFile) -> Result<Vec<&str>> {
    file.meta_strings("tokenizer.ggml.tokens")?.ok_or_else(|| {
        file.meta_err(
            "tokenizer.ggml.tokens",
            "missing from the GGUF metadata (no tokenizer)",
        )
    })
}

/// The two tokenizer kinds transformers builds from a `llama`-architecture GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenizerKind {
    /// `tokenizer.ggml.model = gpt2`: byte-level BPE (SmolLM2, Llama 3, Qwen2).
    ByteLevel,
    /// `tokenizer.ggml.model = llama`: sentencepiece BPE with byte fallback (TinyLlama, Llama 2).
    SentencePiece,
}

fn tokenizer_kind(file: &GgufFile) -> Result<TokenizerKind> {
    let key = "tokenizer.ggml.model";
    match file.meta_str(key)?.unwrap_or("") {
        "gpt2" => Ok(TokenizerKind::ByteLevel),
        "llama" => Ok(TokenizerKind::SentencePiece),
        other => Err(file.meta_err(
            key,
            format!(
                "tokenizer model `{other}` is not supported (only `gpt2`, byte-level BPE, and \
                 `llama`, sentencepiece BPE)"
            ),
        )),
    }
}

/// `tokenizer.ggml.token_type`, or nothing when the file has none.
fn token_types(file: &GgufFile) -> Result<Vec<i128>> {
    let key = "tokenizer.ggml.token_type";
    let Some(value) = file.meta(key) else {
        return Ok(Vec::new());
    };
    value
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|t| match t {
                    MetaValue::Int(i) => Some(*i),
                    _ => None,
                })
                .collect()
        })
        .ok_or_else(|| file.meta_err(key, "not an array of integers"))
}

/// The merges a sentencepiece vocabulary implies, as transformers recovers them when a file has
/// none (`tokenization_utils_base.generate_merges` with the scores): every split of a token into
/// two vocabulary tokens is a merge ranked by the whole token's score, ties broken by the pieces'
/// lengths (longer first), then by the vocabulary order. Python's stable sort is mirrored exactly,
/// because the order of the merges decides the tokenization.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<[String; 2]> {
    // `{token: index}`: a repeated token keeps its last index, as a Python dict does.
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    // `dict(zip(tokens, scores))`: first-seen order, last score.
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f64> = HashMap::new();
    for (&token, &score) in tokens.iter().zip(scores) {
        if score_of.insert(token, score).is_none() {
            order.push(token);
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| index.contains_key(l) && index.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|&(l, r, _)| (index[l], index[r]));
        merges.extend(local);
    }
    // `sorted(key=(score, len(left), len(right)), reverse=True)` keeps equal keys in order.
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| [l.to_string(), r.to_string()])
        .collect()
}

/// `tokenizer.json` as transformers (`integrations/gguf/gguf_tokenizer_mapping.py`) builds it:
/// * `gpt2`: `GPT2Tokenizer(vocab, merges)`, the split chosen by `tokenizer.ggml.pre`;
/// * `llama`: `LlamaTokenizer(vocab, merges)`: sentencepiece pieces as BPE with byte fallback,
///   `Metaspace` (prefix `▁` on the first word only), merges from the file or recovered from the
///   scores;
///
/// then control tokens added as special tokens and user-defined ones as plain added tokens, and a
/// post-processor adding BOS/EOS as `tokenizer.ggml.add_bos_token`/`add_eos_token` say (a
/// sentencepiece file without the flag gets BOS, as llama.cpp does).
fn tokenizer_json(file: &GgufFile) -> Result<String> {
    let kind = tokenizer_kind(file)?;
    let tokens = tokens_of(file)?;
    let token_types = token_types(file)?;
    let merges_key = "tokenizer.ggml.merges";
    let file_merges = file
        .meta_strings(merges_key)?
        .map(|merges| {
            merges
                .iter()
                .map(|m| {
                    let mut parts = m.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => Ok([a.to_string(), b.to_string()]),
                        _ => {
                            Err(file.meta_err(merges_key, format!("merge {m:?} is not two tokens")))
                        }
                    }
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;

    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    for (id, &token) in tokens.iter().enumerate() {
        let spelled = if kind == TokenizerKind::SentencePiece || in_alphabet(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    let merges = match (kind, file_merges) {
        (_, Some(merges)) => merges,
        (TokenizerKind::ByteLevel, None) => {
            return Err(file.meta_err(merges_key, "missing (byte-level BPE needs merges)"));
        }
        (TokenizerKind::SentencePiece, None) => {
            let scores_key = "tokenizer.ggml.scores";
            let scores: Vec<f64> = file
                .meta(scores_key)
                .and_then(MetaValue::as_array)
                .and_then(|a| a.iter().map(MetaValue::as_f64).collect())
                .ok_or_else(|| {
                    file.meta_err(
                        scores_key,
                        "missing or not numbers (a sentencepiece vocabulary without merges \
                         needs its scores)",
                    )
                })?;
            if scores.len() != tokens.len() {
                return Err(file.meta_err(
                    scores_key,
                    format!("{} scores for {} tokens", scores.len(), tokens.len()),
                ));
            }
            merges_from_scores(&tokens, &scores)
        }
    };
    let merges: Vec<Value> = merges.into_iter().map(|m| json!(m)).collect();

    // Added tokens, keyed by id: (content, special).
    let mut added: std::collections::BTreeMap<u64, (String, bool)> = Default::default();
    for (&token, &ty) in tokens.iter().zip(&token_types) {
        let id = || vocab.get(token).and_then(Value::as_u64);
        // 3 = CONTROL: a special token, unless it is spelled outside the byte alphabet (a
        // llama.cpp mislabel that transformers skips).
        if ty == 3
            && (kind == TokenizerKind::SentencePiece || in_alphabet(token))
            && let Some(id) = id()
        {
            added.insert(id, (token.to_string(), true));
        }
        // 4 = USER_DEFINED: matched whole in text, but not special.
        if ty == 4
            && let Some(id) = id()
        {
            added.entry(id).or_insert((token.to_string(), false));
        }
    }
    // The named special tokens are special added tokens in transformers too.
    let specials = special_tokens(file, &tokens)?;
    for (_, token) in &specials {
        if let Some(token) = token
            && let Some(id) = vocab.get(token.as_str()).and_then(Value::as_u64)
        {
            added.entry(id).or_insert((token.clone(), true));
        }
    }
    let added_tokens: Vec<Value> = added
        .into_iter()
        .map(|(id, (content, special))| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special,
            })
        })
        .collect();

    let byte_level = |use_regex: bool| {
        json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": use_regex,
        })
    };
    let pre_tokenizer = match file
        .meta_str("tokenizer.ggml.pre")?
        .and_then(pre_tokenizer_split)
    {
        None if kind == TokenizerKind::SentencePiece => json!({
            "type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first",
            "split": false,
        }),
        None => byte_level(true),
        Some(split) => json!({
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated",
                    "invert": false,
                },
                byte_level(false),
            ],
        }),
    };

    let named = |n: &str| {
        specials
            .iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, t)| t.clone())
    };
    let (add_bos, add_eos) = add_bos_eos(file, kind)?;
    let bos = named("bos_token").filter(|_| add_bos);
    let eos = named("eos_token").filter(|_| add_eos);
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let sequence = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special_map = Map::new();
    if let Some(b) = &bos {
        single.push(special(b, 0));
    }
    single.push(sequence("A", 0));
    if let Some(e) = &eos {
        single.push(special(e, 0));
    }
    pair.extend(single.iter().cloned());
    if let Some(b) = &bos {
        pair.push(special(b, 1));
    }
    pair.push(sequence("B", 1));
    if let Some(e) = &eos {
        pair.push(special(e, 1));
    }
    for t in bos.iter().chain(eos.iter()) {
        let id = vocab.get(t.as_str()).cloned().unwrap_or(Value::Null);
        special_map.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }

    let (decoder, model) = match kind {
        TokenizerKind::ByteLevel => (
            json!({
                "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true,
            }),
            json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges,
            }),
        ),
        TokenizerKind::SentencePiece => (
            json!({
                "type": "Sequence",
                "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"},
                    {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0},
                ],
            }),
            json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges,
            }),
        ),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": special_map,
        },
        "decoder": decoder,
        "model": model,
    });
    Ok(serde_json::to_string(&tokenizer).expect("JSON serializes"))
}

/// Whether BOS and EOS are added: the file's flags; a sentencepiece file without a BOS flag gets
/// BOS (older files have none, and llama.cpp adds it).
fn add_bos_eos(file: &GgufFile, kind: TokenizerKind) -> Result<(bool, bool)> {
    let bos = file.meta_bool("tokenizer.ggml.add_bos_token")?;
    let eos = file.meta_bool("tokenizer.ggml.add_eos_token")?;
    Ok((
        bos.unwrap_or(kind == TokenizerKind::SentencePiece),
        eos.unwrap_or(false),
    ))
}

/// `tokenizer_config.json`: the special tokens, BOS/EOS flags and the chat template.
fn tokenizer_config_json(file: &GgufFile) -> Result<String> {
    let tokens = tokens_of(file)?;
    let mut config = Map::new();
    for (name, token) in special_tokens(file, &tokens)? {
        if let Some(token) = token {
            config.insert(name.into(), json!(token));
        }
    }
    let (add_bos, add_eos) = add_bos_eos(file, tokenizer_kind(file)?)?;
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    if let Some(template) = file.meta_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    config.insert("tokenizer_class".into(), json!("TokenizersBackend"));
    Ok(serde_json::to_string_pretty(&Value::Object(config)).expect("JSON serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut block = h(0.5).to_vec();
        let qs: Vec<i8> = (0..32).map(|i| (i * 8 - 128) as i8).collect();
        block.extend(qs.iter().map(|&q| q as u8));
        let out = dequantize(GgmlType::Q8_0, &block, 32);
        for (i, &q) in qs.iter().enumerate() {
            assert_eq!(out[i], q as f32 * 0.5, "element {i}");
        }
        assert_eq!(out[0], -64.0);
        assert_eq!(out[31], 60.0);
    }

    #[test]
    fn q4_0_block() {
        // byte j: low nibble j % 16, high nibble 15 - j % 16
        let mut block = h(0.25).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q4_0, &block, 32);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.25, "low nibble {j}");
            assert_eq!(
                out[16 + j],
                ((15 - j) as f32 - 8.0) * 0.25,
                "high nibble {j}"
            );
        }
    }

    #[test]
    fn q4_1_block() {
        let mut block = h(1.5).to_vec();
        block.extend(h(-3.0));
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        // Two blocks in a row, the second with other scales.
        block.extend(h(-0.5));
        block.extend(h(2.0));
        block.extend([0xF0u8; 16]);
        let out = dequantize(GgmlType::Q4_1, &block, 64);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 1.5 - 3.0);
            assert_eq!(out[16 + j], (15 - j) as f32 * 1.5 - 3.0);
            assert_eq!(out[32 + j], 2.0);
            assert_eq!(out[48 + j], 15.0 * -0.5 + 2.0);
        }
    }

    #[test]
    fn q5_blocks() {
        // fifth bit set for odd elements
        let qh: u32 = 0xAAAA_AAAA;
        let mut q50 = h(0.5).to_vec();
        q50.extend(qh.to_le_bytes());
        q50.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q5_0, &q50, 32);
        for j in 0..16 {
            let lo = j as i32 + if j % 2 == 1 { 16 } else { 0 };
            let hi = (15 - j) as i32 + if j % 2 == 1 { 16 } else { 0 };
            assert_eq!(out[j], (lo - 16) as f32 * 0.5);
            assert_eq!(out[16 + j], (hi - 16) as f32 * 0.5);
        }
        let mut q51 = h(0.5).to_vec();
        q51.extend(h(1.0));
        q51.extend(qh.to_le_bytes());
        q51.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = dequantize(GgmlType::Q5_1, &q51, 32);
        for j in 0..16 {
            let lo = j as u32 + if j % 2 == 1 { 16 } else { 0 };
            assert_eq!(out[j], lo as f32 * 0.5 + 1.0);
        }
    }

    /// Deterministic bytes for the K-quant blocks.
    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    /// ggml's `get_scale_min_k4`, as written in C.
    fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// Q4_K and Q5_K against ggml's `dequantize_row_q4_K` / `_q5_K` loops.
    #[test]
    fn q4_k_and_q5_k_blocks() {
        for (ty, size) in [(GgmlType::Q4_K, 144), (GgmlType::Q5_K, 176)] {
            let mut block = noise(size, size as u32);
            block[0..2].copy_from_slice(&h(0.0625));
            block[2..4].copy_from_slice(&h(-0.03125));
            let out = dequantize(ty, &block, 256);
            let (d, min) = (0.0625f32, -0.03125f32);
            let scales = &block[4..16];
            let (qh, mut ql) = if ty == GgmlType::Q5_K {
                (&block[16..48], &block[48..176])
            } else {
                (&block[0..0], &block[16..144])
            };
            let mut want = Vec::new();
            let (mut u1, mut u2) = (1u8, 2u8);
            for is in (0..8).step_by(2) {
                let (sc, m) = scale_min_k4(is, scales);
                let (d1, m1) = (d * sc as f32, min * m as f32);
                let (sc, m) = scale_min_k4(is + 1, scales);
                let (d2, m2) = (d * sc as f32, min * m as f32);
                let high = |l: usize, u: u8| {
                    if !qh.is_empty() && qh[l] & u != 0 {
                        16
                    } else {
                        0
                    }
                };
                want.extend((0..32).map(|l| d1 * ((ql[l] & 0xF) + high(l, u1)) as f32 - m1));
                want.extend((0..32).map(|l| d2 * ((ql[l] >> 4) + high(l, u2)) as f32 - m2));
                ql = &ql[32..];
                u1 <<= 2;
                u2 <<= 2;
            }
            assert_eq!(out, want, "{ty:?}");
        }
    }

    /// Q6_K against ggml's `dequantize_row_q6_K` loop.
    #[test]
    fn q6_k_block() {
        let mut block = noise(210, 7);
        block[208..210].copy_from_slice(&h(0.01));
        let out = dequantize(GgmlType::Q6_K, &block, 256);
        let d = f16(&h(0.01));
        let mut want = vec![0.0f32; 256];
        for half in 0..2 {
            let ql = &block[half * 64..];
            let qh = &block[128 + half * 32..];
            let sc = |i: usize| block[192 + half * 8 + i] as i8 as f32;
            let y = &mut want[half * 128..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc(is) * q1 as f32;
                y[l + 32] = d * sc(is + 2) * q2 as f32;
                y[l + 64] = d * sc(is + 4) * q3 as f32;
                y[l + 96] = d * sc(is + 6) * q4 as f32;
            }
        }
        assert_eq!(out, want);
    }

    #[test]
    fn float_types() {
        let f32s: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F32, &f32s, 2), vec![1.5, -2.25]);
        let f16s: Vec<u8> = [h(0.125), h(-7.0)].concat();
        assert_eq!(dequantize(GgmlType::F16, &f16s, 2), vec![0.125, -7.0]);
        let bf16s: Vec<u8> = [half::bf16::from_f32(3.0), half::bf16::from_f32(-0.5)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &bf16s, 2), vec![3.0, -0.5]);
    }

    /// The same as transformers' numpy `w.reshape(n_head, dim, 2, -1).swapaxes(2, 1)`.
    #[test]
    fn rope_unpermute_matches_reshape_swapaxes() {
        let (n_head, head_dim, cols) = (3, 8, 2);
        let rows = n_head * head_dim;
        let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let out = unpermute_rope_rows(&data, rows, cols, n_head);
        let half = head_dim / 2;
        for h in 0..n_head {
            for a in 0..2 {
                for b in 0..half {
                    // output index (h, a, b) reads input (h, b, a) of shape (n_head, half, 2)
                    let src_row = h * head_dim + b * 2 + a;
                    let dst_row = h * head_dim + a * half + b;
                    for c in 0..cols {
                        assert_eq!(out[dst_row * cols + c], data[src_row * cols + c]);
                    }
                }
            }
        }
        // rows 0..4 of head 0 are the even rows
        assert_eq!(out[0..8], [0.0, 1.0, 4.0, 5.0, 8.0, 9.0, 12.0, 13.0]);
    }

    #[test]
    fn tensor_names_round_trip() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.norm.weight", "output_norm.weight"),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            ("model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"),
            (
                "model.layers.12.self_attn.o_proj.weight",
                "blk.12.attn_output.weight",
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                "blk.0.ffn_down.weight",
            ),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
        ] {
            assert_eq!(gguf_tensor_name(hf).as_deref(), Some(gguf));
            assert_eq!(hf_tensor_name(gguf).as_deref(), Some(hf));
        }
        assert_eq!(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
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
