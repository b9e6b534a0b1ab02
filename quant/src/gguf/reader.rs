//! The GGUF reader. The file is untrusted input: every count, length and offset is checked
//! against the bytes that remain before it is used, allocations are bounded by the file's size,
//! and nothing reads past the end of the map (candle's and gguf.cpp's checks, and more).

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::metadata::{Array, Metadata, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_NESTING, MAX_DIMS};
use crate::{Error, GgmlType, Result};

/// One tensor's description from the tensor-info section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF stores them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Row-major shape (outermost first): GGUF's dimensions reversed. A llama.cpp weight
    /// `[ne0 = in, ne1 = out]` becomes `[out, in]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata and tensor infos in memory, tensor data left in the map.
pub struct GgufFile {
    storage: Storage,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file through a read-only memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let storage = if len == 0 {
            // A zero-length map is an error on some platforms; an empty buffer reads as truncated.
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and Kiln never writes to model files while they are
            // mapped. Another process truncating the file meanwhile could fault the reader; that
            // is memmap2's documented caveat, accepted by every mmap-based model loader.
            Storage::Mapped(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        Self::parse(storage)
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Storage::Owned(bytes))
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The data section.
    pub fn data(&self) -> &[u8] {
        // In range: checked in `parse`.
        &self.bytes()[self.data_offset as usize..]
    }

    /// The raw bytes (blocks) of one tensor. In range: every tensor is checked at parse time.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.bytes()[start..start + info.n_bytes as usize]
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
            })
    }

    fn parse(storage: Storage) -> Result<Self> {
        let bytes = storage.bytes();
        let mut r = Cursor { bytes, pos: 0 };

        let magic = r.u32("magic")?;
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::UnsupportedVersion { found: version });
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;

        // Each pair takes at least a key length (8), a type (4) and a one-byte value.
        r.check_count("metadata count", n_kv, 13)?;
        let mut metadata = Metadata::default();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty_id = r.u32("metadata value type")?;
            let value = r.value(&key, ty_id, 0)?;
            metadata.insert(key, value)?;
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = match v {
                    Value::U32(a) => u64::from(*a),
                    other => {
                        return Err(Error::WrongType {
                            key: "general.alignment".into(),
                            expected: "u32",
                            found: other.type_description(),
                        });
                    }
                };
                if a == 0 || !a.is_power_of_two() {
                    return Err(Error::BadAlignment { found: a });
                }
                a
            }
        };

        // Each info takes at least a name length (8), n_dims (4), type (4) and offset (8).
        r.check_count("tensor count", n_tensors, 24)?;
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let info = r.tensor_info()?;
            if !names.insert(info.name.clone()) {
                return Err(Error::DuplicateTensor { name: info.name });
            }
            tensors.push(info);
        }

        let data_offset =
            align_up(r.pos as u64, alignment).ok_or(Error::BadAlignment { found: alignment })?;
        let file_len = bytes.len() as u64;
        if data_offset > file_len && !tensors.is_empty() {
            return Err(Error::Truncated {
                what: "padding before the data section".into(),
                offset: r.pos as u64,
                need: data_offset - r.pos as u64,
                available: file_len - r.pos as u64,
            });
        }
        let data_offset = data_offset.min(file_len);
        let data_len = file_len - data_offset;

        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(Error::MisalignedTensor {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
            let end = t.offset.checked_add(t.n_bytes);
            if end.is_none_or(|end| end > data_len) {
                return Err(Error::TensorOutOfRange {
                    tensor: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    data_len,
                });
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            if pair[0].offset + pair[0].n_bytes > pair[1].offset {
                return Err(Error::TensorsOverlap {
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                });
            }
        }

        Ok(GgufFile {
            storage,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    x.checked_add(alignment - 1)
        .map(|v| v / alignment * alignment)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(Error::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                need: n,
                available: self.remaining() as u64,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in what remains, so
    /// that no allocation is ever sized by an unchecked count.
    fn check_count(&self, what: &str, count: u64, min_size: u64) -> Result<()> {
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|need| need <= self.remaining() as u64);
        if fits {
            Ok(())
        } else {
            Err(Error::CountTooLarge {
                what: what.to_string(),
                offset: self.pos as u64,
                count,
                available: self.remaining() as u64,
            })
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos as u64;
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| Error::InvalidUtf8 {
            what: what.to_string(),
            offset: start,
        })
    }

    fn value(&mut self, key: &str, ty_id: u32, depth: usize) -> Result<Value> {
        let ty = ValueType::from_id(ty_id).ok_or_else(|| Error::UnknownValueType {
            key: key.to_string(),
            found: ty_id,
        })?;
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(key)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::Bool => Value::Bool(self.bool(key)?),
            ValueType::String => Value::String(self.string(key)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(key)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            ValueType::Array => Value::Array(self.array_value(key, depth)?),
        })
    }

    fn bool(&mut self, key: &str) -> Result<bool> {
        match self.array::<1>(key)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            found => Err(Error::BadBool {
                key: key.to_string(),
                found,
            }),
        }
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array> {
        if depth >= MAX_ARRAY_NESTING {
            return Err(Error::NestingTooDeep {
                key: key.to_string(),
                max: MAX_ARRAY_NESTING,
            });
        }
        let ty_id = self.u32(key)?;
        let ty = ValueType::from_id(ty_id).ok_or_else(|| Error::UnknownValueType {
            key: key.to_string(),
            found: ty_id,
        })?;
        let count = self.u64(key)?;
        self.check_count(&format!("array {key:?}"), count, ty.min_size() as u64)?;
        let n = count as usize;

        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let raw = self.take(count * std::mem::size_of::<$t>() as u64, key)?;
                Array::$variant(
                    raw.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(count, key)?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(key)?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(key)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32(&format!("tensor {name:?} dimension count"))?;
        if n_dims > MAX_DIMS {
            return Err(Error::TooManyDims {
                tensor: name,
                found: n_dims,
                max: MAX_DIMS,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&format!("tensor {name:?} dimensions"))?);
        }
        let ty_id = self.u32(&format!("tensor {name:?} type"))?;
        let offset = self.u64(&format!("tensor {name:?} offset"))?;
        let ty = GgmlType::from_id(ty_id).ok_or_else(|| Error::UnknownGgmlType {
            tensor: name.clone(),
            found: ty_id,
        })?;

        // gguf.cpp requires every dimension and the element count to fit in an int64.
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64));
        let Some(n_elements) = n_elements else {
            return Err(Error::ShapeOverflow { tensor: name, dims });
        };
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % ty.block_size() as u64 != 0 {
            return Err(Error::NotBlockMultiple {
                tensor: name,
                ty,
                ne0,
                block: ty.block_size(),
            });
        }
        let n_bytes = ty
            .bytes_for(n_elements)
            .ok_or_else(|| Error::ShapeOverflow {
                tensor: name.clone(),
                dims: dims.clone(),
            })?;
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_elements,
            n_bytes,
        })
    }
}

impl GgufFile {
    /// The tensors as the writer takes them, borrowing this file's bytes.
    pub fn tensors_to_write(&self) -> Vec<super::TensorToWrite<'_>> {
        self.tensors
            .iter()
            .map(|t| super::TensorToWrite {
                name: &t.name,
                dims: &t.dims,
                ty: t.ty,
                data: self.tensor_data(t),
            })
            .collect()
    }
}
