pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Errors of the runtime layer: devices, requests, and everything below, wrapped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("device {id}: {reason}")]
    Device { id: String, reason: String },
    #[error("unknown device {0:?} (expected cpu, wgpu[:N] or cuda[:N]; `kiln devices` lists them)")]
    UnknownDevice(String),
    /// A request that cannot be carried out as given (bad flag values, paths).
    #[error("{0}")]
    Usage(String),
    #[error("reading a result back from the device: {0}")]
    Readback(String),
    #[error(transparent)]
    Quant(#[from] kiln_quant::Error),
    #[error(transparent)]
    Kernel(#[from] kiln_kernels::KernelError),
    #[error(transparent)]
    Model(#[from] kiln_models::ModelError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
