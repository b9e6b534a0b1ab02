use kiln_quant::GgmlType;

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Errors of Kiln's kernel layer: requests a kernel cannot serve, caught before launch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error("no Kiln kernel for {op} on {ty} tensors on the {backend:?} backend")]
    NoKernel {
        op: &'static str,
        ty: GgmlType,
        backend: crate::BackendKind,
    },
    #[error("Kiln has no kernels for the device {0}")]
    UnsupportedDevice(String),
    #[error("{what}: {len} bytes do not hold a {ty} tensor of shape {shape:?} ({expected} bytes)")]
    BadBlocks {
        what: String,
        ty: GgmlType,
        shape: Vec<usize>,
        len: usize,
        expected: u64,
    },
    #[error("{0}")]
    Shape(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Quant(#[from] kiln_quant::Error),
    #[error("reading a tensor back from the device failed: {0}")]
    Readback(String),
}
