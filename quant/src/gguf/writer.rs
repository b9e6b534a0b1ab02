//! The GGUF writer: metadata, tensor infos, and tensor data, each tensor padded to the alignment
//! (the layout llama.cpp's `gguf_write_to_file` and gguf-py's `GGUFWriter` produce).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::metadata::{Array, Metadata, Value};
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::{Error, GgmlType, Result};

/// One tensor to write: GGUF-order dimensions (innermost first) and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorToWrite<'a> {
    pub name: &'a str,
    pub dims: &'a [u64],
    pub ty: GgmlType,
    pub data: &'a [u8],
}

/// Writes a GGUF file (version 3) to `out`. The alignment comes from `general.alignment` when the
/// metadata holds it (as a u32), else 32. Returns the number of bytes written.
pub fn write_gguf(
    out: &mut impl Write,
    metadata: &Metadata,
    tensors: &[TensorToWrite<'_>],
) -> Result<u64> {
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => {
            return Err(Error::BadAlignment {
                found: u64::from(*a),
            });
        }
        Some(other) => {
            return Err(Error::WrongType {
                key: "general.alignment".into(),
                expected: "u32",
                found: other.type_description(),
            });
        }
    };
    let mut w = Counter { out, n: 0 };
    let io = |source| Error::Io {
        path: "<gguf output>".into(),
        source,
    };

    // Validate every tensor before writing a byte.
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if !names.insert(t.name) {
            return Err(Error::DuplicateTensor {
                name: t.name.to_string(),
            });
        }
        let n_elements = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let expected = n_elements.and_then(|n| t.ty.bytes_for(n));
        if expected != Some(t.data.len() as u64) {
            return Err(Error::PartialBlock {
                what: format!("tensor {:?} with dims {:?}", t.name, t.dims),
                ty: t.ty,
                len: t.data.len(),
                block_bytes: t.ty.block_bytes(),
            });
        }
        offsets.push(offset);
        offset = align(offset + t.data.len() as u64, alignment);
    }

    w.put(&MAGIC.to_le_bytes()).map_err(io)?;
    w.put(&3u32.to_le_bytes()).map_err(io)?;
    w.put(&(tensors.len() as u64).to_le_bytes()).map_err(io)?;
    w.put(&(metadata.len() as u64).to_le_bytes()).map_err(io)?;
    for (key, value) in metadata.iter() {
        w.string(key).map_err(io)?;
        w.put(&(value.value_type() as u32).to_le_bytes())
            .map_err(io)?;
        w.value(value).map_err(io)?;
    }
    for (t, &off) in tensors.iter().zip(&offsets) {
        w.string(t.name).map_err(io)?;
        w.put(&(t.dims.len() as u32).to_le_bytes()).map_err(io)?;
        for d in t.dims {
            w.put(&d.to_le_bytes()).map_err(io)?;
        }
        w.put(&t.ty.id().to_le_bytes()).map_err(io)?;
        w.put(&off.to_le_bytes()).map_err(io)?;
    }
    w.pad(alignment).map_err(io)?;
    for t in tensors {
        w.put(t.data).map_err(io)?;
        w.pad(alignment).map_err(io)?;
    }
    w.out.flush().map_err(io)?;
    Ok(w.n)
}

/// Writes a GGUF file at `path` through a temporary file renamed into place on success, so a
/// failed write never leaves a partial file under the final name.
pub fn write_gguf_file(
    path: impl AsRef<Path>,
    metadata: &Metadata,
    tensors: &[TensorToWrite<'_>],
) -> Result<u64> {
    let path = path.as_ref();
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out.gguf".into());
    let tmp = path.with_file_name(format!(".{file_name}.partial"));
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp).map_err(io)?);
        let n = write_gguf(&mut out, metadata, tensors)?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn align(x: u64, alignment: u64) -> u64 {
    x.div_ceil(alignment) * alignment
}

struct Counter<'a, W: Write> {
    out: &'a mut W,
    n: u64,
}

impl<W: Write> Counter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.n += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, alignment: u64) -> std::io::Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut pad = align(self.n, alignment) - self.n;
        while pad > 0 {
            let n = pad.min(ZEROS.len() as u64);
            self.put(&ZEROS[..n as usize])?;
            pad -= n;
        }
        Ok(())
    }

    fn string(&mut self, s: &str) -> std::io::Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn value(&mut self, v: &Value) -> std::io::Result<()> {
        match v {
            Value::U8(x) => self.put(&[*x]),
            Value::I8(x) => self.put(&x.to_le_bytes()),
            Value::U16(x) => self.put(&x.to_le_bytes()),
            Value::I16(x) => self.put(&x.to_le_bytes()),
            Value::U32(x) => self.put(&x.to_le_bytes()),
            Value::I32(x) => self.put(&x.to_le_bytes()),
            Value::F32(x) => self.put(&x.to_le_bytes()),
            Value::Bool(x) => self.put(&[u8::from(*x)]),
            Value::String(s) => self.string(s),
            Value::Array(a) => self.array(a),
            Value::U64(x) => self.put(&x.to_le_bytes()),
            Value::I64(x) => self.put(&x.to_le_bytes()),
            Value::F64(x) => self.put(&x.to_le_bytes()),
        }
    }

    fn array(&mut self, a: &Array) -> std::io::Result<()> {
        self.put(&(a.element_type() as u32).to_le_bytes())?;
        self.put(&(a.len() as u64).to_le_bytes())?;
        macro_rules! each {
            ($v:expr) => {{
                for x in $v {
                    self.put(&x.to_le_bytes())?;
                }
                Ok(())
            }};
        }
        match a {
            Array::U8(v) => self.put(v),
            Array::I8(v) => each!(v),
            Array::U16(v) => each!(v),
            Array::I16(v) => each!(v),
            Array::U32(v) => each!(v),
            Array::I32(v) => each!(v),
            Array::F32(v) => each!(v),
            Array::Bool(v) => {
                let bytes: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
                self.put(&bytes)
            }
            Array::String(v) => {
                for s in v {
                    self.string(s)?;
                }
                Ok(())
            }
            Array::Array(v) => {
                for inner in v {
                    self.array(inner)?;
                }
                Ok(())
            }
            Array::U64(v) => each!(v),
            Array::I64(v) => each!(v),
            Array::F64(v) => each!(v),
        }
    }
}
