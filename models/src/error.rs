pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Errors of model loading and running: bad model files, missing or mis-shaped tensors.
/// Messages name the tensor, the op and both shapes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("{tensor}: expected shape {expected:?}, file has {found:?}")]
    Shape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("unsupported architecture {0:?}")]
    Architecture(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Config(String),
    #[error("{tensor}: missing from the model file")]
    MissingTensor { tensor: String },
    #[error(transparent)]
    Quant(#[from] kiln_quant::Error),
    #[error(transparent)]
    Kernel(#[from] kiln_kernels::KernelError),
}
