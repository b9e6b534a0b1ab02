use crate::GgmlType;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, writing or converting model files.
///
/// Each variant carries the offending value (and where it was found) so that a message alone is
/// enough to understand a bad file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic is {found:#010x} ({}), expected 0x46554747 (\"GGUF\")", printable(&found.to_le_bytes()))]
    BadMagic { found: u32 },
    #[error("unsupported GGUF version {found} (Kiln reads versions 2 and 3)")]
    UnsupportedVersion { found: u32 },
    #[error(
        "file truncated while reading {what} at offset {offset}: need {need} bytes, {available} left"
    )]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        available: u64,
    },
    #[error(
        "{what} at offset {offset}: count {count} cannot fit in the {available} bytes left in the file"
    )]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        available: u64,
    },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata key {key:?}: unknown value type {found}")]
    UnknownValueType { key: String, found: u32 },
    #[error("metadata key {key:?}: bool value is {found}, expected 0 or 1")]
    BadBool { key: String, found: u8 },
    #[error("metadata key {key:?}: arrays nested deeper than {max} levels")]
    NestingTooDeep { key: String, max: usize },
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey { key: String },
    #[error("tensor {name:?} appears twice")]
    DuplicateTensor { name: String },
    #[error("general.alignment = {found}: must be a non-zero power of two")]
    BadAlignment { found: u64 },
    #[error("tensor {tensor:?}: {found} dimensions, at most {max} allowed")]
    TooManyDims {
        tensor: String,
        found: u32,
        max: u32,
    },
    #[error("tensor {tensor:?}: dimensions {dims:?} overflow the element count")]
    ShapeOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor {tensor:?}: unknown ggml type id {found}")]
    UnknownGgmlType { tensor: String, found: u32 },
    #[error(
        "tensor {tensor:?}: first dimension {ne0} is not a multiple of {ty}'s block size {block}"
    )]
    NotBlockMultiple {
        tensor: String,
        ty: GgmlType,
        ne0: u64,
        block: usize,
    },
    #[error(
        "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {tensor:?}: data [{start}, {end}) lies outside the data section of {data_len} bytes"
    )]
    TensorOutOfRange {
        tensor: String,
        start: u64,
        end: u64,
        data_len: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    TensorsOverlap { first: String, second: String },
    #[error("metadata key {key:?} not found")]
    MissingKey { key: String },
    #[error("metadata key {key:?}: expected {expected}, file has {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("tensor {name:?} not found")]
    MissingTensor { name: String },
    #[error("{ty} has no {op} codec in Kiln")]
    Unsupported { ty: GgmlType, op: &'static str },
    #[error(
        "tensor {tensor:?} is already quantized ({from}); converting it to {to} loses accuracy \
         twice: pass --allow-requantize to do it anyway"
    )]
    RequantizeDisallowed {
        tensor: String,
        from: GgmlType,
        to: GgmlType,
    },
    #[error("{what}: {len} bytes is not a whole number of {ty} blocks ({block_bytes} bytes each)")]
    PartialBlock {
        what: String,
        ty: GgmlType,
        len: usize,
        block_bytes: usize,
    },
}

fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
        .collect()
}
