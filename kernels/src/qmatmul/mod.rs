//! Quantized matrix products, `y[m, n] = x[m, k] · W[n, k]ᵀ` with `W` in GGML blocks, and row
//! lookups in such a matrix (token embeddings).
//!
//! CPU (Flex): [`crate::cpu`]'s SIMD kernels with activations quantized on the fly, as llama.cpp.
//! The CubeCL kernels are issue #5; until then a GPU device gets a [`KernelError::NoKernel`].

mod flex;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;
use kiln_quant::GgmlType;

use crate::{BackendKind, KernelError, QTensor, Result};

#[backend_extension(Flex)]
pub trait QMatmulOps: Backend {
    /// `x`: `[m, k]` f32; `words`: `n` rows of `k` values in blocks of `ty`. Returns `[m, n]`.
    fn qmatmul(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        ty: GgmlType,
        n: usize,
        k: usize,
    ) -> FloatTensor<Self>;

    /// Rows `ids` of the `[n, k]` matrix in `words`, as `[ids.len(), k]` f32.
    fn qrows(words: IntTensor<Self>, ty: GgmlType, k: usize, ids: Vec<u32>) -> FloatTensor<Self>;
}

/// The weight types `qmatmul` serves on a backend.
pub fn supports(backend: BackendKind, ty: GgmlType) -> bool {
    match backend {
        BackendKind::Flex => crate::cpu::MATMUL_TYPES.contains(&ty),
        BackendKind::Cube => false,
    }
}

fn matrix_dims(w: &QTensor, op: &'static str) -> Result<(usize, usize)> {
    match w.shape.as_slice() {
        [n, k] => Ok((*n, *k)),
        other => Err(KernelError::Shape(format!(
            "{op}: the weight must be a matrix, it has shape {other:?}"
        ))),
    }
}

/// `x[m, k] · Wᵀ` for a quantized `W` of shape `[n, k]`: `[m, n]`.
pub fn qmatmul(x: Tensor<2>, w: &QTensor) -> Result<Tensor<2>> {
    let backend = BackendKind::of(&w.device())?;
    let (n, k) = matrix_dims(w, "qmatmul")?;
    let [m, kx] = x.dims();
    if kx != k {
        return Err(KernelError::Shape(format!(
            "qmatmul: activations [{m}, {kx}] against a [{n}, {k}] weight"
        )));
    }
    if !supports(backend, w.ty) {
        return Err(KernelError::NoKernel {
            op: "qmatmul",
            ty: w.ty,
            backend,
        });
    }
    crate::cpu::check(w.ty, k).map_err(KernelError::Shape)?;
    let y = <Dispatch as QMatmulOps>::qmatmul(
        x.into_dispatch(),
        w.words.clone().into_dispatch(),
        w.ty,
        n,
        k,
    );
    Ok(Tensor::from_dispatch(y))
}

/// Rows `ids` of a quantized `[n, k]` matrix as f32 `[ids.len(), k]` (embedding lookup).
pub fn qrows(w: &QTensor, ids: &[u32]) -> Result<Tensor<2>> {
    let backend = BackendKind::of(&w.device())?;
    let (n, k) = matrix_dims(w, "qrows")?;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
        return Err(KernelError::Shape(format!(
            "qrows: row {bad} of a matrix with {n} rows"
        )));
    }
    if backend != BackendKind::Flex || !kiln_quant::blocks::DEQUANTIZE_TYPES.contains(&w.ty) {
        return Err(KernelError::NoKernel {
            op: "qrows",
            ty: w.ty,
            backend,
        });
    }
    let y = <Dispatch as QMatmulOps>::qrows(w.words.clone().into_dispatch(), w.ty, k, ids.to_vec());
    Ok(Tensor::from_dispatch(y))
}
